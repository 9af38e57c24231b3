"""The sections of stages.yaml that describe data, backbone, cache, extraction, runs, cluster."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, ValidationInfo, field_validator, model_validator

from .. import vgg16
from ._base import Bool, Float, Int, Section, YamlPath, resolve_path, section_default
from .endtoend import AugmentedCopiesConfig

SPLITS = ("train", "validation", "test")
#: The part of the cache that holds ``backbone.output_layer``'s tensor; the other parts are taps.
OUTPUT = "output"
WEIGHT_SOURCES = ("imagenet", "hed-bsds500")
MAX_IMAGE_SIDE = 4096  # one 4096x4096 input is 200 MB of float32 pixels before any layer


class SplitConfig(Section):
    """Fractions used when the data root has no train/validation/test folders."""

    train: Float = Field(0.7, ge=0, le=1)
    validation: Float = Field(0.15, ge=0, le=1)
    test: Float = Field(0.15, ge=0, le=1)
    seed: Int = 0

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"train + validation + test must be 1, not {total:g}")
        return self


class DataConfig(Section):
    """Where the labelled images are and how they are read."""

    root: YamlPath
    split: SplitConfig = section_default()
    image_size: tuple[Int, Int] = (150, 150)
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"] = \
        "bilinear"
    exif_transpose: Bool = True
    # Images with more pixels are skipped before decoding (decompression bombs); Pillow itself
    # refuses more than 178,956,970 whatever this says.
    max_pixels: Int = Field(89_478_485, gt=0, le=178_956_970)
    # Let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale when that still covers image_size,
    # before the resize: several times less decoding on large photos, slightly different
    # pixels (so part of the fingerprint). Off by default, as Keras' load_img does not.
    jpeg_draft: Bool = False

    @field_validator("root")
    @classmethod
    def _root_exists(cls, path: Path) -> Path:
        if not path.is_dir():
            raise ValueError(f"folder does not exist: {path}")
        return path

    @field_validator("image_size")
    @classmethod
    def _big_enough(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < vgg16.MIN_INPUT_SIDE:
            raise ValueError(f"each side must be at least {vgg16.MIN_INPUT_SIDE} pixels for "
                             f"VGG16")
        if max(value) > MAX_IMAGE_SIDE:
            raise ValueError(f"each side must be at most {MAX_IMAGE_SIDE} pixels")
        return value


class BackboneConfig(Section):
    """The frozen convolutional base, and what of it the cache keeps."""

    weights: Optional[str] = "imagenet"
    output_layer: Literal[vgg16.CUT_LAYERS] = "block5_pool"  # type: ignore[valid-type]
    seed: Int = 0  # initialises the random weights of ``weights: null``
    # Pooled vectors of layers up to output_layer, computed in the same forward pass and cached
    # beside the output: "<layer>.gap" (global average) or "<layer>.gmp" (global max).
    taps: list[str] = Field(default_factory=list)
    # Keep output_layer's (h, w, c) tensor in the cache; false keeps only the taps.
    keep_output: Bool = True
    # Compute precision of the frozen base (a Keras dtype policy: bfloat16 and float16 are
    # "mixed", weights stay float32); part of the fingerprint. Features reach the cache as
    # float32 whatever it is.
    precision: Literal["float32", "bfloat16", "float16"] = "float32"
    # Test-time augmentation stored once: cache the mean of the features of each image and of
    # its left-right mirror (the mirror's output tensor flipped back first, so each position
    # averages features of the same region). Two forward passes per image; part of the
    # fingerprint.
    flip_average: Bool = False

    # field validators run in declaration order, so output_layer and taps are known here
    @field_validator("taps")
    @classmethod
    def _known_taps(cls, taps: list[str], info: ValidationInfo) -> list[str]:
        for tap in taps:
            vgg16.parse_tap(tap)
        doubled = sorted({tap for tap in taps if taps.count(tap) > 1})
        if doubled:
            raise ValueError(f"{', '.join(doubled)} listed twice")
        cut = info.data.get("output_layer")
        if cut is not None:
            present = vgg16.layers_up_to(cut)
            beyond = [vgg16.parse_tap(tap)[0] for tap in taps
                      if vgg16.parse_tap(tap)[0] not in present]
            if beyond:
                raise ValueError(f"{', '.join(beyond)} is past output_layer {cut}: the base "
                                 f"ends there")
        return taps

    @field_validator("keep_output")
    @classmethod
    def _something_kept(cls, keep_output: bool, info: ValidationInfo) -> bool:
        if not keep_output and not info.data.get("taps"):
            raise ValueError("false keeps only the taps, and there are none (list some in "
                             "backbone.taps)")
        return keep_output

    @field_validator("weights", mode="before")
    @classmethod
    def _known_or_file(cls, value: Any, info: ValidationInfo) -> Optional[str]:
        if value is None or value in WEIGHT_SOURCES:
            return value
        if not isinstance(value, (str, Path)):
            raise ValueError("must be imagenet, hed-bsds500, a weights file path, or null")
        path = resolve_path(value, info)
        if not path.is_file():
            raise ValueError(f"not {' or '.join(WEIGHT_SOURCES)}, and no such weights file: "
                             f"{path}")
        return str(path)


class CacheConfig(Section):
    """The shared feature cache."""

    dir: YamlPath = Field(Path(".pipeline/cache"), validate_default=True)
    lock_timeout: Float = Field(0.0, ge=-1)  # seconds to wait for another writer; -1: forever
    # How features are stored: float16 halves the bytes (each value rounded to the nearest
    # half, relative error under 0.05%); part of the fingerprint, since the values differ.
    dtype: Literal["float32", "float16"] = "float32"


class ExtractConfig(Section):
    """Parameters of the extract stage."""

    batch_size: Int = Field(32, ge=1, le=4096)
    shard_size: Int = Field(512, ge=1, le=1_000_000)  # rows per HDF5 shard
    flush_seconds: Float = Field(60.0, gt=0)   # commit a partial shard at least this often
    # Decoding threads; they share each batch's images. One decodes and resizes about 570
    # small photos/s to 150x150 here, more than VGG16 consumes on a CPU; a fast GPU wants one
    # per core.
    decode_workers: Int = Field(2, ge=1, le=64)
    augmented_copies: AugmentedCopiesConfig = section_default()


class ProbeConfig(Section):
    """The probe stage: a logistic regression per cached part, to see which layer transfers."""

    # inverse regularisation strengths tried per part; the best on validation is kept. Unit-norm
    # parts (normalize: l2 or power) give small logits, so the useful C are large: on
    # flowers-1000 every part chose C = 10 when that was the top of the grid
    C: list[Float] = Field(default_factory=lambda: [0.1, 1.0, 10.0, 100.0, 1000.0], min_length=1)
    normalize: Literal["none", "l2", "power"] = "power"
    max_iter: Int = Field(1000, ge=10, le=100_000)

    @field_validator("C")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        if any(value <= 0 for value in values):
            raise ValueError("every C must be > 0")
        return values


class RunsConfig(Section):
    """Where run folders go."""

    dir: YamlPath = Field(Path("runs"), validate_default=True)


class ClusterConfig(Section):
    """Where sweeps and extraction run (dask.distributed)."""

    # local: a LocalCluster on this machine for sweeps, extraction in this process;
    # synchronous: both in this process, one trial after another; or the address of a running
    # scheduler, e.g. tcp://10.0.0.5:8786, whose workers run sweeps and extraction
    scheduler: str = "local"
    workers: Optional[Int] = Field(None, ge=1, le=1024)  # LocalCluster processes; null: cores
    # dask worker resources each extraction partition needs on a scheduler, e.g. {GPU: 1}
    # with one worker per GPU started as `dask worker --resources GPU=1 --nthreads 1`
    worker_resources: dict[str, Float] = Field(default_factory=dict)

    @field_validator("worker_resources")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if not name or not amount > 0 or math.isinf(amount):
                raise ValueError(f"{name!r}: {amount}; resources are names with positive "
                                 f"amounts, such as GPU: 1")
        return value

    @field_validator("scheduler")
    @classmethod
    def _known(cls, value: str) -> str:
        if value in ("local", "synchronous") or "://" in value:
            return value
        raise ValueError("local, synchronous, or a scheduler address such as "
                         "tcp://host:8786")

    @property
    def on_scheduler(self) -> bool:
        """Whether ``scheduler`` names a running scheduler (not local or synchronous)."""
        return self.scheduler not in ("local", "synchronous")
