"""Which head kinds exist: one implementation per ``kind`` of stages.yaml.

Adding a kind is one :class:`~pipeline.heads.kind.HeadKind` and one entry here (and its name in
``pipeline.config.heads.HEAD_KINDS``, which the configuration validates against).
"""

from __future__ import annotations

from ..config import HeadsConfig
from ..errors import HeadLoadError
from ._sklearn import SKLEARN_HEAD_KINDS
from .dense import DenseKind
from .kind import HeadKind

KINDS: dict[str, HeadKind] = {kind.name: kind for kind in (DenseKind(), *SKLEARN_HEAD_KINDS)}


def head_kind(name: str) -> HeadKind:
    """The implementation of ``kind: name`` (:class:`HeadLoadError` for a name no release of
    the pipeline knows, as in a head folder written by hand)."""
    try:
        return KINDS[name]
    except KeyError:
        raise HeadLoadError(f"unknown head kind {name!r}; known: {', '.join(KINDS)}") from None


def check_heads(heads: HeadsConfig, source: str = "stages.yaml") -> None:
    """Check every head's parameters and sweep values against its kind, before any work.

    Raises :class:`~pipeline.errors.ConfigError` naming the file, the head and the parameter.
    """
    for name, head in heads.models.items():
        head_kind(head.kind).check(f"{source}: stages.heads.models.{name}", head)

