"""The one place that imports TensorFlow and Keras, quietly and with the TensorFlow backend.

Modules that need TF import it from here (``from pipeline.nn.runtime import keras, tf``), and only
modules that build or run a model do: the configuration, the dataset scan, the backbone
fingerprint and the cache never do.

TensorFlow's C++ start-up messages (oneDNN notice, "could not find cuda drivers", cuInit
errors on machines without a GPU) ignore TF_CPP_MIN_LOG_LEVEL in current releases because they
are logged before absl logging is initialised. They are noise for a CLI user, so file
descriptor 2 is pointed at /dev/null while TF starts; Python exceptions are unaffected. Set
PIPELINE_TF_VERBOSE=1 to see them.
"""

import contextlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


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


with _quiet_native_stderr():
    import keras
    import tensorflow as tf

    tf.config.list_physical_devices()  # device discovery logs its cuInit error here

if keras.backend.backend() != "tensorflow":
    raise ImportError(f"the pipeline needs KERAS_BACKEND=tensorflow, not "
                      f"{keras.backend.backend()!r}")

__all__ = ["tf", "keras"]
