"""The whole stages.yaml: :class:`PipelineConfig`, read and validated once.

Everything the program needs from the YAML file goes through :func:`load_config`; nothing past
it sees raw dictionaries. Errors name the file and the dotted key, before any work starts::

    stages.yaml: data.split.train: Input should be a valid number

Paths in the file are relative to the file's folder. ``--set key.sub=value`` overrides are applied
to the raw document before validation, the value read as YAML, so they are checked the same way.

Keys renamed in a release (:data:`RENAMED_KEYS`) get their new name here, before validation:
the file or a ``--set`` may still use the old name, with a
:class:`~pipeline.errors.RenamedKeyWarning`::

    stages.yaml: stages.extract.augmented_views is now stages.extract.augmented_copies; rename
    it (the old name will stop working in a later release)

and both names at once are an error.
"""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import Field, ValidationError

from ..errors import ConfigError, RenamedKeyWarning
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


#: Keys of stages.yaml that a release renamed, old dotted key -> new (in the same section). The
#: old name still loads, read as the new one, with a RenamedKeyWarning; both at once are an
#: error. pipeline.lock's parameters recorded under an old name compare by the new one.
RENAMED_KEYS: dict[str, str] = {
    "stages.extract.augmented_views": "stages.extract.augmented_copies",
    "stages.heads.augmented_views": "stages.heads.augmented_copies",
}


def current_key(key: str) -> str:
    """The dotted ``key`` under this release's names: an old name of :data:`RENAMED_KEYS`, or
    a key inside a section of that name, becomes the new one; any other key is left as is."""
    for old, new in RENAMED_KEYS.items():
        if key == old or key.startswith(f"{old}."):
            return new + key[len(old):]
    return key


#: What :func:`key_default` answers for a key it cannot name a plain default for.
NO_DEFAULT = object()


def key_default(key: str) -> Any:
    """The default of the dotted configuration ``key`` as ``to_yaml_dict`` writes it (a plain
    number, string, boolean, None or list of them), or :data:`NO_DEFAULT` when ``key`` is
    inside a mapping of the user's (a head's name), required, or not a plain value.

    A key added by a release has the default that keeps the earlier behaviour, so a
    pipeline.lock written before it existed and a current value equal to its default describe
    the same work."""
    model: Any = PipelineConfig
    *sections, leaf = key.split(".")
    for name in sections:
        field = getattr(model, "model_fields", {}).get(name)
        if field is None or not (isinstance(field.annotation, type)
                                 and issubclass(field.annotation, Section)):
            return NO_DEFAULT
        model = field.annotation
    field = getattr(model, "model_fields", {}).get(leaf)
    if field is None or field.is_required():
        return NO_DEFAULT
    value = field.get_default(call_default_factory=True)
    plain = (bool, int, float, str, type(None))
    if isinstance(value, plain) or (isinstance(value, list)
                                    and all(isinstance(v, plain) for v in value)):
        return value
    return NO_DEFAULT


def _renamed_message(old: str, new: str) -> str:
    return (f"{old} is now {new}; rename it (the old name will stop working in a later "
            f"release)")


def _with_section(document: dict, path: list[str], section: dict) -> dict:
    """A copy of ``document`` with the section at ``path`` replaced (the sections on the way
    copied, the rest shared)."""
    if not path:
        return section
    return {**document, path[0]: _with_section(document[path[0]], path[1:], section)}


def rename_old_keys(document: dict, source: str = "stages.yaml", stacklevel: int = 2) -> dict:
    """``document`` with every old key of :data:`RENAMED_KEYS` under its new name, a
    :class:`RenamedKeyWarning` for each (``stacklevel`` as :func:`warnings.warn`'s, counted
    from the caller); :class:`ConfigError` where a section has both names. The caller's
    document is not changed."""
    for old, new in RENAMED_KEYS.items():
        *path, old_name = old.split(".")
        new_name = new.rsplit(".", 1)[-1]
        section: Any = document
        for part in path:
            section = section.get(part) if isinstance(section, dict) else None
        if not isinstance(section, dict) or old_name not in section:
            continue
        if new_name in section:
            raise ConfigError(f"{source}: {old} and {new} are both given: they are one "
                              f"setting, {old} its old name; keep only {new}")
        warnings.warn(f"{source}: {_renamed_message(old, new)}", RenamedKeyWarning,
                      stacklevel=stacklevel + 1)
        renamed = {new_name if name == old_name else name: value
                   for name, value in section.items()}
        document = _with_section(document, path, renamed)
    return document


def apply_override(document: dict, assignment: str) -> None:
    """Apply one ``key.sub=value`` to the raw YAML ``document`` (value parsed as YAML); a key
    under an old name of :data:`RENAMED_KEYS` sets the new one, with a warning."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value is not valid YAML: {_one_line(exc)}") from None
    key = key.strip()
    if current_key(key) != key:
        old = next(old for old in RENAMED_KEYS if key == old or key.startswith(f"{old}."))
        warnings.warn(f"--set {key}: {_renamed_message(old, RENAMED_KEYS[old])}",
                      RenamedKeyWarning, stacklevel=4)
        key = current_key(key)
    parts = key.split(".")
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


def _nested_named(loc: tuple, name: str) -> list[str]:
    """``section.name`` for each section at ``loc`` that has a key ``name`` (a key given one
    level too high, as ``heads`` for ``stages.heads``)."""
    return [f"{section}.{name}" for section in _known_keys(loc)
            if name in _known_keys((*loc, section))]


def _override_key(loc: str, overridden: tuple[str, ...]) -> tuple[str | None, bool]:
    """The ``--set`` key an error at ``loc`` is about, and whether it is that key's alone:
    (key, True) for the key or a key inside it; (key, False) when the error is about a section
    the key is in (a rule over several keys, some from the file); (None, False) for the
    file's."""
    for key in reversed(overridden):  # the last --set of a key is the one that counts
        if loc == key or loc.startswith(f"{key}."):
            return key, True
    for key in reversed(overridden):
        if key.startswith(f"{loc}."):
            return key, False
    return None, False


def _format_validation_error(source: str, exc: ValidationError,
                             overridden: tuple[str, ...] = (), section: tuple[str, ...] = ()
                             ) -> str:
    """One line per error: where (the file, or the ``--set`` that set the key), the key's
    path (``section`` first, for a section validated alone) and what is wrong."""
    lines = []
    for err in exc.errors():
        path = (*section, *err["loc"])
        loc = ".".join(str(p) for p in path) or "(top level)"
        if err["type"] == "extra_forbidden":
            known = _known_keys(path[:-1])
            close = difflib.get_close_matches(str(path[-1]), known, n=1) or \
                _nested_named(path[:-1], str(path[-1]))
            msg = "unknown key" + (f"; did you mean {close[0]}?" if close else "") + \
                (f" (known here: {', '.join(known)})" if known else "")
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            given = err.get("input")
            if isinstance(given, (str, int, float, bool)) and len(repr(given)) <= 40:
                msg += f" (got {given!r})"
        key, alone = _override_key(loc, overridden)
        if key is None:
            lines.append(f"{source}: {loc}: {msg}")
        elif not alone:
            lines.append(f"{source} with --set {key}: {loc}: {msg}")
        else:  # the user typed the key: name it once, and where it came from
            lines.append(f"--set {key} (command line): "
                         f"{msg if key == loc else f'{loc}: {msg}'}")
    return "\n".join(lines)


def override_keys(overrides: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The keys that ``--set`` assignments set, under their current names."""
    keys = (assignment.partition("=")[0].strip() for assignment in overrides)
    return tuple(current_key(key) for key in keys if key)


def parse_config(document: Any, source: Path | str = "stages.yaml",
                 base_dir: Path | None = None,
                 overridden: tuple[str, ...] = ()) -> PipelineConfig:
    """Validate a raw YAML ``document`` into a :class:`PipelineConfig` or raise ConfigError;
    errors about a key in ``overridden`` (set by ``--set``) name the command line, not the
    file."""
    source_path = Path(source)
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(f"{source_path.name}: the top level must be a mapping of sections "
                          f"(data, backbone, cache, stages, runs, cluster)")
    if "source" in document:  # set by the loader itself, never by the file
        raise ConfigError(f"{source_path.name}: source: unknown key (known here: "
                          f"{', '.join(_known_keys(()))})")
    document = rename_old_keys(document, source_path.name, stacklevel=3)
    base = base_dir if base_dir is not None else source_path.resolve().parent
    try:
        config = PipelineConfig.model_validate({**document, "source": str(source_path)},
                                               context={"base_dir": base})
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source_path.name, exc, overridden)) \
            from None
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


def _read_document(path: Path, overrides: tuple[str, ...] | list[str],
                   rename: bool = True) -> Any:
    """The file's YAML with ``overrides`` applied; ``rename``: its old key names renamed
    first, so that a ``--set`` of the new name lands in the file's section."""
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
    if rename and isinstance(document, dict):
        document = rename_old_keys(document, path.name, stacklevel=4)
    for assignment in overrides:
        if not isinstance(document, dict):
            break  # the caller reports the bad top level
        apply_override(document, assignment)
    return document


def load_config(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> PipelineConfig:
    """Read ``path`` (stages.yaml), apply ``--set`` overrides and validate it."""
    path = Path(path)
    return parse_config(_read_document(path, overrides), source=path,
                        overridden=override_keys(overrides))


def load_cache_config(path: str | Path,
                      overrides: tuple[str, ...] | list[str] = ()) -> CacheConfig:
    """Only the ``cache`` section of ``path``: cache commands work while data.root is missing."""
    path = Path(path)
    document = _read_document(path, overrides, rename=False)  # only the cache section counts
    section = document.get("cache") if isinstance(document, dict) else None
    try:
        return CacheConfig.model_validate(section or {},
                                          context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(path.name, exc, override_keys(overrides),
                                                   section=("cache",))) from None
