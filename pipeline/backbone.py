"""The frozen VGG16 convolutional base, built from a BackboneSpec, and its layer table.

The feature extractor takes raw RGB pixels (float32, 0..255, the output of pipeline.images) and
applies VGG16's preprocessing inside the model, in :class:`VGG16Preprocess`. Keeping the
preprocessing in the graph means extraction and any end-to-end model that reuses the base share
one preprocessing path, not two copies that could drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ._tf import keras
from .errors import BackboneWeightsError
from .fingerprint import IMAGENET_NOTOP_FILE, BackboneSpec

VGG16_CONV_LAYERS = {1: 2, 2: 2, 3: 3, 4: 3, 5: 3}  # block -> number of conv layers
# Where keras.applications.VGG16 itself downloads the notop weights from, and their md5
# (copied from Keras' vgg16.py: its constants are not public API).
IMAGENET_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
                      "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
IMAGENET_NOTOP_MD5 = "6d6bbae143d832006294945121d1f1fc"


@keras.saving.register_keras_serializable(package="pipeline")
class VGG16Preprocess(keras.layers.Layer):
    """``keras.applications.vgg16.preprocess_input`` as a layer: RGB->BGR, minus ImageNet mean."""

    def call(self, inputs):
        return keras.applications.vgg16.preprocess_input(keras.ops.cast(inputs, "float32"))

    def compute_output_shape(self, input_shape):
        return input_shape


def fetch_imagenet_weights() -> Path:
    """Keras' own download of the VGG16 notop ImageNet weights (into ~/.keras/models)."""
    return Path(keras.utils.get_file(IMAGENET_NOTOP_FILE, IMAGENET_NOTOP_URL,
                                     cache_subdir="models", file_hash=IMAGENET_NOTOP_MD5))


def _hed_conv_arrays(path) -> dict[str, list[np.ndarray]]:
    """Kernel and bias of each VGG16 conv layer from the hed-bsds500 weights file."""
    arrays = {}
    with h5py.File(path, "r") as f:
        for block, count in VGG16_CONV_LAYERS.items():
            for j in range(count):
                group = f"block{block}/layers/conv2d{'' if j == 0 else f'_{j}'}/vars"
                try:
                    arrays[f"block{block}_conv{j + 1}"] = [f[f"{group}/0"][()], f[f"{group}/1"][()]]
                except KeyError:
                    raise BackboneWeightsError(f"{path}: no {group}/0 and /1; is this the "
                                               f"hed-bsds500 weights file?") from None
    return arrays


def load_conv_arrays(base: keras.Model, arrays: dict[str, list[np.ndarray]], source) -> None:
    """Set each named conv layer of ``base`` from ``arrays``, checking every shape first."""
    conv_layers = [layer for layer in base.layers if "_conv" in layer.name]
    for layer in conv_layers:
        if layer.name not in arrays:
            raise BackboneWeightsError(f"{source}: no weights for {layer.name}")
        expected = [tuple(w.shape) for w in layer.get_weights()]
        found = [tuple(a.shape) for a in arrays[layer.name]]
        if expected != found:
            raise BackboneWeightsError(f"{source}: {layer.name} expects shapes {expected}, "
                                       f"file has {found}")
    for layer in conv_layers:
        layer.set_weights(arrays[layer.name])


def seed_conv_weights(model: keras.Model, seed: int) -> None:
    """Give every layer with weights Glorot-uniform kernels and zero biases drawn from ``seed``
    and the layer's position, in numpy: the same values in any process and any thread. (Keras'
    own initializers take their seeds from Python's global random state, which the other
    threads of a dask worker draw from too, so the same seed gave other weights there.)"""
    for index, layer in enumerate(layer for layer in model.layers if layer.weights):
        rng = np.random.default_rng([seed, index])
        for variable in layer.weights:
            shape = tuple(variable.shape)
            if len(shape) == 1:
                value = np.zeros(shape, np.float32)
            else:
                receptive = int(np.prod(shape[:-2]))
                limit = np.sqrt(6.0 / (receptive * (shape[-2] + shape[-1])))
                value = rng.uniform(-limit, limit, shape).astype(np.float32)
            variable.assign(value)


def build_vgg16_base(spec: BackboneSpec) -> keras.Model:
    """VGG16 ``include_top=False`` at ``spec.input_shape`` with its weights loaded, frozen."""
    weights = spec.weights
    if weights.kind == "random":
        keras.utils.set_random_seed(weights.seed)  # what runs after the build is seeded too
    base = keras.applications.VGG16(include_top=False, weights=None,
                                    input_shape=spec.input_shape)
    if weights.kind == "random":
        seed_conv_weights(base, weights.seed)
    elif weights.kind == "hed-bsds500":
        load_conv_arrays(base, _hed_conv_arrays(weights.path), weights.path)
    elif weights.kind in ("imagenet", "file"):
        try:
            base.load_weights(str(weights.path))
        except Exception as exc:  # Keras raises many types for a wrong file
            raise BackboneWeightsError(
                f"{weights.path}: cannot load as VGG16 include_top=False weights: "
                f"{' '.join(str(exc).split())[:200]}") from None
    if spec.output_layer != base.layers[-1].name:
        base = keras.Model(base.input, base.get_layer(spec.output_layer).output,
                           name=f"vgg16_to_{spec.output_layer}")
    base.trainable = False
    return base


def build_feature_extractor(spec: BackboneSpec) -> keras.Model:
    """Raw RGB (N, h, w, 3) float32 in 0..255 -> features (N, *spec.output_shape) float32."""
    base = build_vgg16_base(spec)
    pixels = keras.Input(shape=spec.input_shape, name="rgb_pixels")
    features = base(VGG16Preprocess(name="vgg16_preprocess")(pixels), training=False)
    return keras.Model(pixels, features, name="feature_extractor")


def compiled_inference(model: keras.Model):
    """``model`` as one traced TensorFlow function for any batch size: (N, h, w, 3) pixels ->
    its outputs (features for the extractor, class probabilities for an end-to-end model).

    ``predict_on_batch`` retraces for every new batch shape; the last, shorter batch of a run
    then costs seconds of tracing (as much as 30 images of inference on 2 CPU cores). A fixed
    input signature with an unknown batch dimension traces once.
    """
    from ._tf import tf

    def features(pixels):
        return model(pixels, training=False)

    signature = [tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)]
    # autograph=False: the function has no Python control flow to convert. XLA is left off:
    # measured slower on CPU (14.3 vs 16.9 img/s at 150x150).
    return tf.function(features, input_signature=signature, autograph=False, jit_compile=False)


@dataclass(frozen=True)
class LayerRow:
    """One line of the layer table."""

    index: int
    name: str
    input_shape: str
    output_shape: str
    params: int
    trainable: bool


def _shape(tensor_or_list) -> str:
    if isinstance(tensor_or_list, (list, tuple)) and tensor_or_list and \
            not isinstance(tensor_or_list[0], (int, type(None))):
        return ", ".join(_shape(t) for t in tensor_or_list)
    shape = getattr(tensor_or_list, "shape", tensor_or_list)
    return str(tuple(shape))


def layer_table(model: keras.Model) -> list[LayerRow]:
    """Every layer of ``model`` (nested models expanded) with shapes, parameters and status."""
    rows: list[LayerRow] = []

    def walk(m, parent_trainable: bool):
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                walk(layer, parent_trainable and layer.trainable)
                continue
            params = layer.count_params() if layer.built else 0
            is_input = isinstance(layer, keras.layers.InputLayer)
            rows.append(LayerRow(index=len(rows), name=layer.name,
                                 input_shape="-" if is_input else _shape(layer.input),
                                 output_shape=_shape(layer.output), params=params,
                                 trainable=parent_trainable and layer.trainable and params > 0))
    walk(model, model.trainable)
    return rows


def format_layer_table(rows: list[LayerRow]) -> str:
    """The layer table as aligned text with totals (trainable, frozen, all parameters)."""
    header = f"{'#':>3}  {'layer':<18} {'input shape':<22} {'output shape':<22} " \
             f"{'params':>11}  status"
    lines = [header, "-" * len(header)]
    for r in rows:
        status = "trainable" if r.trainable else ("frozen" if r.params else "-")
        lines.append(f"{r.index:>3}  {r.name:<18} {r.input_shape:<22} {r.output_shape:<22} "
                     f"{r.params:>11,}  {status}")
    total = sum(r.params for r in rows)
    trainable = sum(r.params for r in rows if r.trainable)
    lines += ["-" * len(header),
              f"total parameters:     {total:>12,}",
              f"trainable parameters: {trainable:>12,}",
              f"frozen parameters:    {total - trainable:>12,}"]
    return "\n".join(lines)
