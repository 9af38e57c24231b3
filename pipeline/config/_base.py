"""What every section of stages.yaml shares: strict types, path resolution, error wording."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
)

# YAML already types its scalars: a quoted "32" where a number belongs is a mistake to report,
# not a value to coerce.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]

#: Keras optimizers a section may name.
OPTIMIZERS = ("rmsprop", "adam", "nadam", "sgd")


class Section(BaseModel):
    """A strict, immutable section: unknown keys and wrongly typed values are errors.

    A key's meaning is the docstring written under it (pydantic's attribute docstrings): the
    generated stages.yaml reference (:mod:`pipeline.reference`) prints it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False,
                              use_attribute_docstrings=True)


def section_default() -> Any:
    """The default of a nested section: an absent section is validated like an empty mapping,
    in the same context (the YAML file's folder), so its default paths resolve relative to the
    file, not to the working folder."""
    return Field(default_factory=dict, validate_default=True)


def resolve_path(value: Any, info: ValidationInfo) -> Path:
    """``value`` as an absolute path; relative paths are relative to the YAML file's folder
    (the validation context's ``base_dir``)."""
    base = (info.context or {}).get("base_dir", Path.cwd())
    try:
        path = Path(value).expanduser()
    except RuntimeError as exc:  # "~nosuchuser/..."
        raise ValueError(str(exc)) from None
    return path if path.is_absolute() else (Path(base) / path).resolve()


def _path_from_yaml(value: Any, info: ValidationInfo) -> Path:
    if not isinstance(value, (str, Path)):
        raise ValueError("must be a path")
    return resolve_path(value, info)


#: A path written in stages.yaml: relative paths are relative to the file, not to the cwd.
YamlPath = Annotated[Path, BeforeValidator(_path_from_yaml)]


def reject_non_finite(where: str, value: Any) -> None:
    """NaN and infinity are never a parameter value (and JSON cannot record them)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: {value} is not a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            reject_non_finite(f"{where}.{key}", item)
    elif isinstance(value, list):
        for item in value:
            reject_non_finite(where, item)


def first_error(prefix: str, exc: ValidationError) -> str:
    """The first problem of ``exc`` as ``prefix.key: message``."""
    err = exc.errors()[0]
    where = ".".join([prefix, *(str(p) for p in err["loc"])])
    message = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
    return f"{where}: {message.removeprefix('Value error, ')}"
