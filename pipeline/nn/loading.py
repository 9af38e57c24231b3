"""Keras models in and out without running code from files: the one safe loader, and the one
way models are saved.

``model.keras`` files (dense heads, finetune, scratch) are loaded in Keras' safe mode, which
refuses serialized Python (a ``Lambda`` layer with a lambda, custom functions); the pipeline's
own layers are registered first, so its models load wherever they were saved. Any failure is
a :class:`~pipeline.errors.ModelLoadError` with the reason, as the file may be damaged or
hostile. Models also travel between processes (dask) as the bytes of such a file.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from cache.files import replacing

from ..errors import ModelLoadError


def save_keras_model(model, path: Path) -> None:
    """``model`` as the ``.keras`` file ``path``, which appears only when complete. On JAX or
    PyTorch, Keras saves through TensorFlow where it is installed: it is imported first, with
    its start-up messages silenced as on its own backend."""
    from .runtime import quiet_tensorflow_import

    quiet_tensorflow_import()
    with replacing(path, keep_suffix=True) as temp:
        model.save(temp)


def load_keras_model(path: Path):
    """The ``.keras`` file at ``path``, uncompiled (prediction needs no optimizer), in safe
    mode; :class:`ModelLoadError` whatever went wrong."""
    from . import layers as _registers_the_pipelines_layers  # noqa: F401
    from .runtime import keras

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 (a damaged or hostile archive raises many kinds)
        raise ModelLoadError(f"{path}: cannot load: {' '.join(str(exc).split())[:500]}") \
            from None


def keras_model_bytes(model) -> bytes:
    """``model`` as the bytes of its ``.keras`` file (to send it to another process)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"
        save_keras_model(model, path)
        return path.read_bytes()


def keras_model_from_bytes(data: bytes):
    """Inverse of :func:`keras_model_bytes`, through :func:`load_keras_model`."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"
        path.write_bytes(data)
        return load_keras_model(path)
