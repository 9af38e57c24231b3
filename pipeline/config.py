"""stages.yaml, parsed and validated once into typed objects.

Everything the program needs from the YAML file goes through :func:`load_config`; nothing past
it sees raw dictionaries. Errors name the file and the dotted key, before any work starts::

    stages.yaml: data.split.train: Input should be a valid number

Paths in the file are relative to the file's folder. ``--set key.sub=value`` overrides are applied
to the raw document before validation, the value read as YAML, so they are checked the same way.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .config_endtoend import AugmentedViewsConfig, FinetuneConfig, ScratchConfig
from .config_heads import ClusterConfig, HeadsConfig
from .errors import ConfigError

SPLITS = ("train", "validation", "test")
WEIGHT_SOURCES = ("imagenet", "hed-bsds500")
VGG16_CUT_LAYERS = ("block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool",
                    "block5_conv3", "block4_conv3")
MIN_IMAGE_SIDE = 32  # VGG16's five 2x2 poolings need at least 32 pixels per side
MAX_IMAGE_SIDE = 4096  # one 4096x4096 input is 200 MB of float32 pixels before any layer

# YAML already types its scalars: a quoted "32" where a number belongs is a mistake to report,
# not a value to coerce.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]


class _Section(BaseModel):
    """A strict section: unknown keys and wrongly typed values are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)


def _section_default() -> Any:
    # An absent section is validated like an empty mapping, in the same context (the YAML
    # file's folder), so its default paths resolve relative to the file, not to the cwd.
    return Field(default_factory=dict, validate_default=True)


def _resolve(value: Any, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir", Path.cwd())
    try:
        path = Path(value).expanduser()
    except RuntimeError as exc:  # "~nosuchuser/..."
        raise ValueError(str(exc)) from None
    return path if path.is_absolute() else (Path(base) / path).resolve()


def _path_from_yaml(value: Any, info: ValidationInfo) -> Path:
    if not isinstance(value, (str, Path)):
        raise ValueError("must be a path")
    return _resolve(value, info)


# A path written in stages.yaml: relative paths are relative to the file, not to the cwd.
YamlPath = Annotated[Path, BeforeValidator(_path_from_yaml)]


class SplitConfig(_Section):
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


class DataConfig(_Section):
    """Where the labelled images are and how they are read."""

    root: YamlPath
    split: SplitConfig = _section_default()
    image_size: tuple[Int, Int] = (150, 150)
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"] = \
        "bilinear"
    exif_transpose: Bool = True
    # Images with more pixels are skipped before decoding (decompression bombs); Pillow itself
    # refuses more than 178,956,970 whatever this says.
    max_pixels: Int = Field(89_478_485, gt=0, le=178_956_970)

    @field_validator("root")
    @classmethod
    def _root_exists(cls, path: Path) -> Path:
        if not path.is_dir():
            raise ValueError(f"folder does not exist: {path}")
        return path

    @field_validator("image_size")
    @classmethod
    def _big_enough(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < MIN_IMAGE_SIDE:
            raise ValueError(f"each side must be at least {MIN_IMAGE_SIDE} pixels for VGG16")
        if max(value) > MAX_IMAGE_SIDE:
            raise ValueError(f"each side must be at most {MAX_IMAGE_SIDE} pixels")
        return value


class BackboneConfig(_Section):
    """The frozen convolutional base."""

    weights: Optional[str] = "imagenet"
    output_layer: Literal[VGG16_CUT_LAYERS] = "block5_pool"  # type: ignore[valid-type]
    seed: Int = 0  # initialises the random weights of ``weights: null``

    @field_validator("weights", mode="before")
    @classmethod
    def _known_or_file(cls, value: Any, info: ValidationInfo) -> Optional[str]:
        if value is None or value in WEIGHT_SOURCES:
            return value
        if not isinstance(value, (str, Path)):
            raise ValueError("must be imagenet, hed-bsds500, a weights file path, or null")
        path = _resolve(value, info)
        if not path.is_file():
            raise ValueError(f"not {' or '.join(WEIGHT_SOURCES)}, and no such weights file: "
                             f"{path}")
        return str(path)


class CacheConfig(_Section):
    """The shared feature cache."""

    dir: YamlPath = Field(Path(".pipeline/cache"), validate_default=True)
    lock_timeout: Float = Field(0.0, ge=-1)  # seconds to wait for another writer; -1: forever


class ExtractConfig(_Section):
    """Parameters of the extract stage."""

    batch_size: Int = Field(32, ge=1, le=4096)
    shard_size: Int = Field(512, ge=1, le=1_000_000)  # rows per HDF5 shard
    flush_seconds: Float = Field(60.0, gt=0)   # commit a partial shard at least this often
    # Decoding threads. One decodes and resizes about 400 photos/s to 150x150 here, far more
    # than VGG16 consumes on a CPU; raise it for a fast GPU.
    decode_workers: Int = Field(2, ge=1, le=64)
    augmented_views: AugmentedViewsConfig = _section_default()


class StagesConfig(_Section):
    """Per-stage parameters."""

    extract: ExtractConfig = _section_default()
    heads: HeadsConfig = _section_default()
    finetune: FinetuneConfig = _section_default()
    scratch: ScratchConfig = _section_default()


class RunsConfig(_Section):
    """Where run folders go."""

    dir: YamlPath = Field(Path("runs"), validate_default=True)


class PipelineConfig(_Section):
    """The whole validated stages.yaml."""

    data: DataConfig
    backbone: BackboneConfig = _section_default()
    cache: CacheConfig = _section_default()
    stages: StagesConfig = _section_default()
    runs: RunsConfig = _section_default()
    cluster: ClusterConfig = _section_default()
    source: Optional[Path] = Field(None, exclude=True)  # the YAML file, for messages

    def to_yaml_dict(self) -> dict:
        """The resolved configuration as plain data (absolute paths), for run snapshots."""
        return self.model_dump(mode="json", exclude={"source"})


def apply_override(document: dict, assignment: str) -> None:
    """Apply one ``key.sub=value`` to the raw YAML ``document`` (value parsed as YAML)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value is not valid YAML: {_one_line(exc)}") from None
    parts = key.strip().split(".")
    node = document
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[:i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _known_keys(loc: tuple) -> list[str]:
    """The keys a section at ``loc`` accepts, for 'unknown key' messages."""
    model: Any = PipelineConfig
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    fields = getattr(model, "model_fields", {})
    return [name for name, f in fields.items() if not f.exclude]


def _format_validation_error(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            known = _known_keys(err["loc"][:-1])
            msg = "unknown key" + (f" (known here: {', '.join(known)})" if known else "")
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {loc}: {msg}")
    return "\n".join(lines)


def parse_config(document: Any, source: Path | str = "stages.yaml",
                 base_dir: Path | None = None) -> PipelineConfig:
    """Validate a raw YAML ``document`` into a :class:`PipelineConfig` or raise ConfigError."""
    source_path = Path(source)
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(f"{source_path.name}: the top level must be a mapping of sections "
                          f"(data, backbone, cache, stages, runs, cluster)")
    if "source" in document:  # set by the loader itself, never by the file
        raise ConfigError(f"{source_path.name}: source: unknown key (known here: "
                          f"{', '.join(_known_keys(()))})")
    base = base_dir if base_dir is not None else source_path.resolve().parent
    try:
        return PipelineConfig.model_validate({**document, "source": str(source_path)},
                                             context={"base_dir": base})
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source_path.name, exc)) from None


def _read_document(path: Path, overrides: tuple[str, ...] | list[str]) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {_one_line(exc)}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name}: not valid YAML: {_one_line(exc)}") from None
    if document is None:
        document = {}
    for assignment in overrides:
        if not isinstance(document, dict):
            break  # the caller reports the bad top level
        apply_override(document, assignment)
    return document


def load_config(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> PipelineConfig:
    """Read ``path`` (stages.yaml), apply ``--set`` overrides and validate it."""
    path = Path(path)
    return parse_config(_read_document(path, overrides), source=path)


def load_cache_config(path: str | Path,
                      overrides: tuple[str, ...] | list[str] = ()) -> CacheConfig:
    """Only the ``cache`` section of ``path``: cache commands work while data.root is missing."""
    path = Path(path)
    document = _read_document(path, overrides)
    section = document.get("cache") if isinstance(document, dict) else None
    try:
        return CacheConfig.model_validate(section or {},
                                          context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        message = _format_validation_error(path.name, exc)
        raise ConfigError(message.replace(f"{path.name}: ", f"{path.name}: cache.")) from None
