"""Models run for inference as one compiled function, whatever the batch size, on the process's
Keras backend (TensorFlow, JAX or PyTorch), with numpy in and numpy out."""

from __future__ import annotations

import numpy as np

from .runtime import BACKEND, keras


def compiled_inference(model: keras.Model):
    """``model`` as a function of (N, h, w, 3) float32 pixels (numpy) -> its outputs as numpy,
    in the model's structure (``{part: array}`` for a feature extractor, an (N, classes) array
    of probabilities for an end-to-end model), compiled once for any batch size.

    - TensorFlow: one ``tf.function`` with an unknown batch dimension. ``predict_on_batch``
      retraces for every new batch shape; the last, shorter batch of a run then costs seconds
      of tracing (as much as 30 images of inference on 2 CPU cores).
    - JAX: ``jax.jit`` of the model's stateless call; a batch shorter than the first is padded
      to its size (and the padding cut off), so a run compiles once.
    - PyTorch: eager calls under ``torch.no_grad`` (nothing to trace).
    """
    if BACKEND == "tensorflow":
        return _tensorflow(model)
    if BACKEND == "jax":
        return _jax(model)
    return _torch(model)


def _to_numpy(outputs):
    return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)


def _tensorflow(model: keras.Model):
    from .runtime import tf

    def outputs(pixels):
        return model(pixels, training=False)

    signature = [tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)]
    # autograph=False: the function has no Python control flow to convert. XLA is left off:
    # measured slower on CPU (14.3 vs 16.9 img/s at 150x150).
    function = tf.function(outputs, input_signature=signature, autograph=False,
                           jit_compile=False)
    return lambda pixels: _to_numpy(function(np.asarray(pixels, np.float32)))


def _jax(model: keras.Model):
    import jax

    trainable = [variable.value for variable in model.trainable_variables]
    frozen = [variable.value for variable in model.non_trainable_variables]

    @jax.jit
    def outputs(trainable, frozen, pixels):
        return model.stateless_call(trainable, frozen, pixels, training=False)[0]

    batch = {"size": None}

    def call(pixels):
        pixels = np.asarray(pixels, np.float32)
        n = len(pixels)
        size = batch["size"] = batch["size"] or n
        if n < size:
            pixels = np.concatenate([pixels, np.zeros((size - n, *pixels.shape[1:]),
                                                      np.float32)])
        result = _to_numpy(outputs(trainable, frozen, pixels))
        return keras.tree.map_structure(lambda rows: rows[:n], result) if n < size else result

    return call


def _torch(model: keras.Model):
    import torch

    def call(pixels):
        with torch.no_grad():
            return _to_numpy(model(np.asarray(pixels, np.float32), training=False))

    return call
