"""The frozen VGG16 convolutional base, built from a BackboneSpec (TensorFlow).

The feature extractor takes raw RGB pixels (float32, 0..255, the output of the decoder) and
applies VGG16's preprocessing inside the model (:class:`~pipeline.nn.layers.VGG16Preprocess`),
so extraction and every end-to-end model that reuses the base share one preprocessing path.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import numpy as np

from .. import vgg16
from ..config import OUTPUT
from ..errors import BackboneWeightsError
from ..nn.layers import VGG16Preprocess
from ..nn.runtime import keras, seed_random
from .spec import BackboneSpec
from .weights import hed_conv_arrays

_POOLS = {"gap": keras.layers.GlobalAveragePooling2D, "gmp": keras.layers.GlobalMaxPooling2D}
# backbone.precision -> the Keras dtype policy the base's layers are built under
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


@contextlib.contextmanager
def dtype_policy(precision: str):
    """Layers made inside compute in ``precision`` (weights stay float32, as Keras' mixed
    policies keep them); the global policy is restored after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(POLICIES[precision])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


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
    """VGG16 ``include_top=False`` at ``spec.input_shape`` with its weights loaded, frozen,
    computing in ``spec.precision``."""
    weights = spec.weights
    if weights.kind == "random":
        seed_random(weights.seed)  # what runs after the build is seeded too
    with dtype_policy(spec.precision):
        base = keras.applications.VGG16(include_top=False, weights=None,
                                        input_shape=spec.input_shape)
    if weights.kind == "random":
        seed_conv_weights(base, weights.seed)
    elif weights.kind == "hed-bsds500":
        load_conv_arrays(base, hed_conv_arrays(weights.path), weights.path)
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


def part_layer(spec: BackboneSpec, part: str) -> str:
    """The base layer whose output ``part`` (the output, or a tap) reads."""
    return spec.output_layer if part == OUTPUT else vgg16.parse_tap(part)[0]


def build_feature_extractor(spec: BackboneSpec,
                            parts: tuple[str, ...] | None = None) -> keras.Model:
    """Raw RGB (N, h, w, 3) float32 in 0..255 -> ``{part: features}`` in one call.

    ``parts`` (default: ``spec.parts``) are :data:`~pipeline.backbone.spec.OUTPUT` for the
    (N, *spec.output_shape) tensor and tap names for (N, c) pooled vectors of earlier layers;
    the base is built only as deep as the deepest part needs. The preprocessing and the pools
    of the taps compute in float32 whatever ``spec.precision`` is (a mean over a feature map
    is more exact summed in float32), and every part comes out float32.

    With ``spec.flip_average`` the same base (the same weights) also runs on the left-right
    mirror of the pixels, and every part is the float32 mean of the two: the mirror's output
    tensor flipped back along the width first, so that each position averages features of the
    same region; each tap pooled from both. The regions match exactly when the width divides by
    the pools' strides before the layer (224 for block5_pool); otherwise the max pools' floor
    (150 -> 75 -> 37 -> 18) drops the last column of one pass and the first of the other, so
    they differ by up to one column of the layer below. Twice the compute, one model.
    """
    parts = tuple(parts or spec.parts)
    layers = {part: part_layer(spec, part) for part in parts}
    deepest = max(layers.values(), key=vgg16.LAYERS.index)
    base = build_vgg16_base(replace(spec, output_layer=deepest))
    reads = list(dict.fromkeys(layers.values()))
    inner = keras.Model(base.input, [base.get_layer(layer).output for layer in reads],
                        name="vgg16_layers")
    pixels = keras.Input(shape=spec.input_shape, name="rgb_pixels")
    preprocessed = VGG16Preprocess(name="vgg16_preprocess")(pixels)
    passes = [preprocessed]
    if spec.flip_average:
        passes.append(keras.ops.flip(preprocessed, axis=2))  # axis 2: the width of (N, h, w, 3)
    maps = []  # per pass, {layer: its (N, h', w', c) output}
    for pixels_of_pass in passes:
        computed = inner(pixels_of_pass, training=False)
        maps.append(dict(zip(reads, computed if isinstance(computed, list) else [computed])))
    outputs = {}
    for part, layer in layers.items():
        name = part.replace(".", "_")
        if part == OUTPUT:
            # the mirror's tensor flipped back: each position then averages the same pixels'
            each = [maps[0][layer], *(keras.ops.flip(pass_maps[layer], axis=2)
                                      for pass_maps in maps[1:])]
        else:
            pool = _POOLS[vgg16.parse_tap(part)[1]](name=f"tap_{name}")  # one layer, each pass
            each = [pool(pass_maps[layer]) for pass_maps in maps]
        outputs[part] = _float32_mean(each, name)
    return keras.Model(pixels, outputs, name="feature_extractor")


def _float32_mean(tensors: list, name: str):
    """One tensor as float32, or the float32 mean of several (a float32 layer casts its inputs
    to float32 before it computes)."""
    if len(tensors) > 1:
        return keras.layers.Average(dtype="float32", name=f"flip_average_{name}")(tensors)
    if tensors[0].dtype == "float32":
        return tensors[0]
    return keras.layers.Activation("linear", dtype="float32", name=f"{name}_float32")(tensors[0])
