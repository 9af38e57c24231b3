"""The one place that imports Keras (and, on the TensorFlow backend, TensorFlow), quietly.

Modules that build or run a model import Keras from here (``from pipeline.nn.runtime import
keras``). The few TensorFlow-only pieces (its inference function, the unwrapping of errors
raised inside its graphs) import ``tf`` from here too, only when ``BACKEND`` is tensorflow; on
another backend ``tf`` is a :class:`~pipeline.errors.BackendError` that says so. The
configuration, the dataset scan, the backbone fingerprint and the cache never import this
module.

The backend is Keras' own choice (``KERAS_BACKEND``, else keras.json, else tensorflow; see
:mod:`pipeline.nn.backend`); TensorFlow is the default and is imported only on its backend.

TensorFlow's C++ start-up messages (oneDNN notice, "could not find cuda drivers", cuInit
errors on machines without a GPU) ignore TF_CPP_MIN_LOG_LEVEL in current releases because they
are logged before absl logging is initialised. They are noise for a CLI user, so file
descriptor 2 is pointed at /dev/null while Keras starts; Python exceptions are unaffected. Set
PIPELINE_TF_VERBOSE=1 to see them.
"""

import contextlib
import importlib.util
import os
import sys

from ..errors import BackendError
from ..optional_imports import DATAFRAME_LIBRARIES, modules_marked_absent
from .backend import check_backend, keras_backend_name

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BACKEND = check_backend()


@contextlib.contextmanager
def _quiet_native_stderr():
    if os.environ.get("PIPELINE_TF_VERBOSE") == "1":
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (some test runners, embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# TensorFlow's TFLite helpers import JAX where it is installed (the JAX backend's extra), for
# a conversion the pipeline never makes: 106 MiB of every process on the TensorFlow backend
_NOT_FOR_TENSORFLOW = ("jax", "jaxlib") if BACKEND == "tensorflow" else ()

with _quiet_native_stderr(), modules_marked_absent(_NOT_FOR_TENSORFLOW + DATAFRAME_LIBRARIES):
    import keras

    if BACKEND == "tensorflow":
        import tensorflow as tf

        tf.config.list_physical_devices()  # device discovery logs its cuInit error here

if keras.backend.backend() != BACKEND:
    raise ImportError(f"Keras runs on {keras.backend.backend()!r} but the pipeline read "
                      f"{keras_backend_name()!r} from KERAS_BACKEND / keras.json")


def seed_random(seed: int) -> None:
    """Seed Python's, numpy's and the backend's random streams, and Keras' global seed
    generator (what ``keras.utils.set_random_seed`` does). That function also seeds TensorFlow
    whenever it is installed, importing it; on the JAX and PyTorch backends this does the rest
    and leaves TensorFlow unimported."""
    if BACKEND == "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    import random

    import numpy as np
    from keras.src.backend.common import global_state
    from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR
    from keras.src.utils.rng_utils import GLOBAL_RANDOM_SEED

    # Keras' own steps, without the TensorFlow one: record the seed and drop the global
    # generator, so the next one is made from the seed (private names: no public setter
    # skips TensorFlow)
    global_state.set_global_attribute(GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)
    if BACKEND == "torch":
        import torch

        torch.manual_seed(seed)


def quiet_tensorflow_import() -> None:
    """On JAX or PyTorch, import TensorFlow now, with its start-up messages silenced, if it is
    installed: Keras imports it to save any ``.keras`` model, whatever the backend, and would
    let those messages through. Called by the stages that save models; extraction and
    prediction never do."""
    if BACKEND != "tensorflow" and "tensorflow" not in sys.modules \
            and importlib.util.find_spec("tensorflow") is not None:
        with _quiet_native_stderr():
            import tensorflow  # noqa: F401


def __getattr__(name: str):
    # ``from pipeline.nn.runtime import tf`` on another backend: code that should have asked
    # BACKEND first
    if name == "tf":
        raise BackendError(f"TensorFlow is not this process's Keras backend ({BACKEND}); set "
                           f"KERAS_BACKEND=tensorflow")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BACKEND", "keras", "quiet_tensorflow_import", "seed_random"]
