"""Which Keras backend this process runs, known without importing Keras (nor TensorFlow).

Keras 3 runs on TensorFlow, JAX or PyTorch, chosen by the ``KERAS_BACKEND`` environment
variable, else by ``backend`` in ``$KERAS_HOME/keras.json`` (``~/.keras/keras.json``), else
TensorFlow. The pipeline reads the same settings the same way so that stages can refuse work
their backend cannot do before anything heavy is imported; :mod:`pipeline.nn.runtime` checks
that Keras agrees once it is imported.

Every stage runs on every backend. Extraction (augmented copies and taps included), prediction
and the scikit-learn heads never import TensorFlow on JAX or PyTorch; Keras itself imports it,
where it is installed, to save a ``.keras`` model (dense heads, finetune, scratch). Every
Keras model trains through Keras' ``fit``; TensorBoard logs are written on TensorFlow only.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from ..errors import BackendError

BACKENDS = ("tensorflow", "jax", "torch")


def keras_backend_name() -> str:
    """The backend Keras will use in this process: ``tensorflow``, ``jax`` or ``torch`` (or
    whatever else is set, which :func:`check_backend` refuses)."""
    name = os.environ.get("KERAS_BACKEND")
    if name:
        return name
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    try:
        return json.loads((home / "keras.json").read_text(encoding="utf-8")).get(
            "backend", "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def check_backend(name: str | None = None) -> str:
    """``name`` (default: this process's backend) if the pipeline runs on it and its package
    is installed, else :class:`BackendError`."""
    name = name or keras_backend_name()
    if name not in BACKENDS:
        raise BackendError(f"KERAS_BACKEND={name}: the pipeline runs on "
                           f"{', '.join(BACKENDS)}")
    if importlib.util.find_spec(name) is None:
        raise BackendError(f"KERAS_BACKEND={name}, but {name} is not installed: pip install "
                           f"'vgg16-feature-pipeline[{name}]'")
    return name

