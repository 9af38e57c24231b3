"""The pipeline's own Keras layers, registered so that every model saved with them loads again
(in safe mode, wherever it was saved): VGG16's preprocessing, a horizontal shear, and the
signed square root of power normalisation."""

from __future__ import annotations

from .runtime import keras


@keras.saving.register_keras_serializable(package="pipeline")
class VGG16Preprocess(keras.layers.Layer):
    """``keras.applications.vgg16.preprocess_input`` as a layer: RGB->BGR, minus ImageNet mean.

    Raw RGB pixels (N, h, w, 3) float32 in 0..255 in, VGG16's inputs out. Keeping the
    preprocessing in the graph means extraction and every end-to-end model that reuses the base
    share one preprocessing path, not two copies that could drift apart.
    """

    def call(self, inputs):
        return keras.applications.vgg16.preprocess_input(keras.ops.cast(inputs, "float32"))

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="pipeline")
class RandomHorizontalShear(keras.layers.RandomShear):
    """``RandomShear`` along x by up to +-``factor`` of the width, whose saved config loads.

    Keras 3 stores a float ``x_factor`` as the pair (-f, f), which its own constructor then
    refuses when the model is loaded ("should be in the range [0, 1.0]"); this layer stores
    ``factor`` instead.
    """

    def __init__(self, factor: float, **kwargs):
        kwargs.pop("x_factor", None)
        kwargs.pop("y_factor", None)
        super().__init__(x_factor=factor, y_factor=0.0, **kwargs)
        self.shear_factor = factor

    def get_config(self) -> dict:
        """The layer's config with ``factor`` in place of the x/y factor pairs."""
        config = super().get_config()
        config.pop("x_factor", None)
        config.pop("y_factor", None)
        return {**config, "factor": self.shear_factor}


@keras.saving.register_keras_serializable(package="pipeline")
class SignedSqrt(keras.layers.Layer):
    """``sign(x) * sqrt(|x| + 1e-12)``: the first step of power normalisation (then unit
    length). The small constant keeps the gradient finite where a ReLU output is exactly 0
    (sign(0) = 0 makes it 0 there), should training flow through it into the base."""

    def call(self, inputs):
        x = keras.ops.cast(inputs, "float32")
        return keras.ops.sign(x) * keras.ops.sqrt(keras.ops.abs(x) + 1e-12)

    def compute_output_shape(self, input_shape):
        return input_shape
