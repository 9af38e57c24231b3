"""The whole stages.yaml: :class:`PipelineConfig`, read and validated once.

Everything the program needs from the YAML file goes through :func:`load_config`; nothing past
it sees raw dictionaries. Errors name the file and the dotted key, before any work starts::

    stages.yaml: data.split.train: Input should be a valid number

Paths in the file are relative to the file's folder. ``--set key.sub=value`` overrides are applied
to the raw document before validation, the value read as YAML, so they are checked the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import Field, ValidationError

from ..errors import ConfigError
from ._base import Section, section_default
from .endtoend import FinetuneConfig, ScratchConfig
from .heads import OUTPUT_PARTS, HeadsConfig, feature_parts
from .sections import (
    BackboneConfig,
    CacheConfig,
    ClusterConfig,
    DataConfig,
    ExtractConfig,
    ProbeConfig,
    RunsConfig,
)


class StagesConfig(Section):
    """Per-stage parameters."""

    extract: ExtractConfig = section_default()
    probe: ProbeConfig = section_default()
    heads: HeadsConfig = section_default()
    finetune: FinetuneConfig = section_default()
    scratch: ScratchConfig = section_default()


class PipelineConfig(Section):
    """The whole validated stages.yaml."""

    data: DataConfig
    backbone: BackboneConfig = section_default()
    cache: CacheConfig = section_default()
    stages: StagesConfig = section_default()
    runs: RunsConfig = section_default()
    cluster: ClusterConfig = section_default()
    source: Optional[Path] = Field(None, exclude=True)  # the YAML file, for messages

    def to_yaml_dict(self) -> dict:
        """The resolved configuration as plain data (absolute paths), for run snapshots."""
        return self.model_dump(mode="json", exclude={"source"})

    @property
    def source_name(self) -> str:
        """The YAML file's name, as messages start (``stages.yaml`` for a config made in
        memory)."""
        return self.source.name if self.source else "stages.yaml"


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
        config = PipelineConfig.model_validate({**document, "source": str(source_path)},
                                               context={"base_dir": base})
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source_path.name, exc)) from None
    return config


def check_heads_read_what_is_cached(config: PipelineConfig) -> None:
    """:class:`ConfigError` unless every part a head reads (declared or swept) is one extract
    caches: a tap of ``backbone.taps``, or a part of the output tensor while ``keep_output`` is
    on. (Checked by the heads stage before any work, not when the file is read: a file that
    only extracts needs no heads that fit.)"""
    backbone = config.backbone
    for name, head in config.stages.heads.models.items():
        values = [head.features]
        if head.sweep is not None and isinstance(head.sweep.params.get("features"), list):
            values += head.sweep.params["features"]
        for value in values:
            for part in feature_parts(value):
                where = f"{config.source_name}: stages.heads.models.{name}.features: {part}"
                if part in OUTPUT_PARTS and not backbone.keep_output:
                    raise ConfigError(f"{where} is a part of the output tensor, which "
                                      f"backbone.keep_output: false leaves out of the cache")
                if part not in OUTPUT_PARTS and part not in backbone.taps:
                    raise ConfigError(f"{where} is not in backbone.taps (extract caches only "
                                      f"those: {', '.join(backbone.taps) or 'none'})")


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
