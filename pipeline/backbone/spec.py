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
from ..config import PipelineConfig
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
    """Everything needed to build the backbone and to fingerprint its outputs."""

    weights: WeightsSource
    decode: DecodeOptions
    output_layer: str = "block5_pool"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(height, width, 3)."""
        return (*self.decode.size, 3)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Shape of one feature tensor, e.g. (4, 4, 512) at 150x150 cut at block5_pool."""
        return vgg16.output_shape(self.output_layer, self.decode.size)

    def describe(self) -> dict:
        """The fingerprint's ingredients, as stored in the cache's ``fingerprint.json``."""
        return {
            "format": FINGERPRINT_FORMAT,
            "architecture": "vgg16",
            "weights": self.weights.content_id(),
            "input": self.decode.fingerprint_part(),
            "preprocessing": vgg16.PREPROCESSING,
            "output_layer": self.output_layer,
            "output_shape": list(self.output_shape),
        }

    def fingerprint(self) -> Fingerprint:
        """The fingerprint of this spec (hashes the weights file: call it once per command)."""
        description = self.describe()
        canonical = json.dumps(description, sort_keys=True, separators=(",", ":"))
        return Fingerprint(f"vgg16-{sha256_text(canonical)[:16]}", description)


def decode_options(config: PipelineConfig) -> DecodeOptions:
    """The decode options of ``config.data``."""
    data = config.data
    return DecodeOptions(size=tuple(data.image_size), interpolation=data.interpolation,
                         exif_transpose=data.exif_transpose, max_pixels=data.max_pixels)


def backbone_spec(config: PipelineConfig, allow_download: bool = True) -> BackboneSpec:
    """The :class:`BackboneSpec` of a validated configuration (resolving its weights file:
    see :func:`~pipeline.backbone.weights.resolve_weights`)."""
    return BackboneSpec(weights=resolve_weights(config.backbone, allow_download),
                        decode=decode_options(config), output_layer=config.backbone.output_layer)
