"""What the backbone is, resolved and fingerprinted without building it (no TensorFlow).

The backbone fingerprint keys the feature cache: two runs share cached features exactly when
their fingerprints are equal. It hashes everything that changes the numbers a cached entry
holds: the weights' content (not their file name), the decode and resize options, the input
size, the preprocessing and the layer the base is cut at. Computing it reads the weights file
once (about 0.2 s for VGG16's 59 MB) and never imports TensorFlow, so a run with nothing new to
extract finishes in seconds. A command computes it once, in its
:class:`~pipeline.context.RunContext`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cache.files import sha256_text

from .. import vgg16
from ..config import OUTPUT, PipelineConfig
from ..data.decode import DecodeOptions
from .weights import WeightsSource, resolve_weights

FINGERPRINT_FORMAT = 1


@dataclass(frozen=True)
class Fingerprint:
    """The backbone fingerprint: ``id`` names the cache folder, ``description`` (what it is
    made of) is stored there as ``fingerprint.json``."""

    id: str
    description: dict


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to build the backbone and to fingerprint its outputs.

    ``taps`` (``<layer>.<pool>`` names) are pooled vectors of earlier layers computed in the
    same pass; each has a fingerprint and a store of its own, so adding or removing one never
    changes the output's fingerprint. ``keep_output`` False caches the taps only.
    ``flip_average`` caches, for every part, the mean of the features of the image and of its
    left-right mirror (two passes of the base).
    """

    weights: WeightsSource
    decode: DecodeOptions
    output_layer: str = "block5_pool"
    taps: tuple[str, ...] = ()
    keep_output: bool = True
    precision: str = "float32"   # compute dtype of the base: float32, bfloat16 or float16
    storage: str = "float32"     # dtype of the cached rows: float32 or float16
    flip_average: bool = False   # cache the mean of each image's features and its mirror's

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(height, width, 3)."""
        return (*self.decode.size, 3)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Shape of one feature tensor, e.g. (4, 4, 512) at 150x150 cut at block5_pool."""
        return vgg16.output_shape(self.output_layer, self.decode.size)

    def tap_shape(self, tap: str) -> tuple[int]:
        """Shape of one tap vector, e.g. (512,) for block4_conv3.gap."""
        return (vgg16.tap_channels(vgg16.parse_tap(tap)[0]),)

    @property
    def parts(self) -> tuple[str, ...]:
        """What a forward pass computes and the cache keeps: :data:`OUTPUT` (unless
        ``keep_output`` is off), then the taps, in configuration order."""
        return ((OUTPUT,) if self.keep_output else ()) + self.taps

    def describe(self) -> dict:
        """The fingerprint's ingredients, as stored in the cache's ``fingerprint.json``.

        A precision or storage other than float32 is an ingredient (and ``storage`` tells the
        cache which dtype to store); float32 is left out, so fingerprints made before either
        existed stay what they were. ``flip_average`` is likewise named only when it is on.
        """
        description = {
            "format": FINGERPRINT_FORMAT,
            "architecture": "vgg16",
            "weights": self.weights.content_id(),
            "input": self.decode.fingerprint_part(),
            "preprocessing": vgg16.PREPROCESSING,
            "output_layer": self.output_layer,
            "output_shape": list(self.output_shape),
        }
        if self.precision != "float32":
            description["precision"] = self.precision
        if self.storage != "float32":
            description["storage"] = self.storage
        if self.flip_average:
            description["flip_average"] = True
        return description

    def describe_tap(self, tap: str) -> dict:
        """The ingredients of a tap's fingerprint: the output's, with the tap for the cut."""
        description = {key: value for key, value in self.describe().items()
                       if key not in ("output_layer", "output_shape")}
        return {**description, "tap": tap, "output_shape": list(self.tap_shape(tap))}

    def fingerprint(self) -> Fingerprint:
        """The fingerprint of the output (hashes the weights file: call it once per command)."""
        return _fingerprint(self.describe())

    def tap_fingerprint(self, tap: str) -> Fingerprint:
        """The fingerprint of ``tap``'s vectors: what decides them, the cut layer aside."""
        return _fingerprint(self.describe_tap(tap))


def _fingerprint(description: dict) -> Fingerprint:
    canonical = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return Fingerprint(f"vgg16-{sha256_text(canonical)[:16]}", description)


def decode_options(config: PipelineConfig) -> DecodeOptions:
    """The decode options of ``config.data``."""
    data = config.data
    return DecodeOptions(size=tuple(data.image_size), interpolation=data.interpolation,
                         exif_transpose=data.exif_transpose, max_pixels=data.max_pixels,
                         jpeg_draft=data.jpeg_draft)


def backbone_spec(config: PipelineConfig, allow_download: bool = True) -> BackboneSpec:
    """The :class:`BackboneSpec` of a validated configuration (resolving its weights file:
    see :func:`~pipeline.backbone.weights.resolve_weights`)."""
    backbone = config.backbone
    return BackboneSpec(weights=resolve_weights(backbone, allow_download),
                        decode=decode_options(config), output_layer=backbone.output_layer,
                        taps=tuple(backbone.taps), keep_output=backbone.keep_output,
                        precision=backbone.precision, storage=config.cache.dtype,
                        flip_average=backbone.flip_average)
