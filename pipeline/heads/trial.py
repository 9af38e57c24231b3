"""A trial's settings: one set of parameters for one head, as plain data.

:class:`TrialSpec` is what a :class:`~pipeline.heads.kind.HeadKind` reads to fit a trial: the
head's configuration and the values one sweep point gives it. It knows nothing of kinds (the
kind is resolved once, in :mod:`pipeline.heads.trials`), so this module imports no kind and
the kinds import it without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import HeadConfig
from ..config.heads import PIPELINE_KEYS
from .features import sources_of


@dataclass(frozen=True)
class TrialSpec:
    """One set of parameters for one head: the head's name, the trial's number within its
    sweep (``index``), the head's configuration, the sweep values of this trial
    (``overrides``) and the seed of every random choice it makes."""

    head: str
    index: int
    config: HeadConfig
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def setting(self, key: str) -> Any:
        """features, normalize, scale or pca of this trial (a sweep value, else the head's
        own)."""
        return self.overrides.get(key, getattr(self.config, key))

    def estimator_params(self) -> dict[str, Any]:
        """Parameters passed to the estimator (or dense head): declared, then swept."""
        swept = {k: v for k, v in self.overrides.items() if k not in PIPELINE_KEYS}
        return {**self.config.params, **swept}

    @property
    def sources(self) -> tuple[str, ...]:
        """The cached sources the trial reads: the output tensor, taps."""
        return sources_of(self.setting("features"))
