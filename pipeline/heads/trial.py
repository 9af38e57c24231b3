"""Trials: one set of parameters for one head, and every trial of the configured heads.

Each head in ``stages.heads.models`` gives one trial (its declared parameters) or, with a
``sweep``, one per grid point or random draw (scikit-learn's ParameterGrid / ParameterSampler).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats
from sklearn.model_selection import ParameterGrid, ParameterSampler

from ..config import HeadConfig, HeadsConfig
from ..config.heads import PIPELINE_KEYS
from .features import sources_of
from .kind import HeadKind
from .registry import head_kind


@dataclass(frozen=True)
class TrialSpec:
    """One set of parameters for one head: what a sweep trial (or a plain head) fits."""

    head: str
    trial: int
    config: HeadConfig
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    @property
    def kind(self) -> HeadKind:
        """The implementation of ``config.kind``."""
        return head_kind(self.config.kind)

    def setting(self, key: str) -> Any:
        """features, scale or pca of this trial (a sweep value, else the head's own)."""
        return self.overrides.get(key, getattr(self.config, key))

    def estimator_params(self) -> dict[str, Any]:
        """Parameters passed to the estimator (or dense head): declared, then swept."""
        swept = {k: v for k, v in self.overrides.items() if k not in PIPELINE_KEYS}
        return {**self.config.params, **swept}

    @property
    def sources(self) -> tuple[str, ...]:
        """The cached sources the trial reads: the output tensor, taps."""
        return sources_of(self.setting("features"))

    def describe(self) -> dict[str, Any]:
        """Everything that defines this trial, as plain data for leaderboards."""
        return self.kind.describe(self)

    @property
    def expected_cost(self) -> int:
        """A rough rank of the fit time: dask starts the costly trials first, so a long one
        does not begin alone at the end while the other workers sit idle."""
        return self.kind.relative_cost * (2 if self.setting("features") == "flatten" else 1)


def expand_trials(heads: HeadsConfig) -> list[TrialSpec]:
    """Every trial of every head, in declaration order, then grid or sampling order."""
    trials = []
    for name, head in heads.models.items():
        if head.sweep is None:
            settings: list[dict[str, Any]] = [{}]
        elif head.sweep.method == "grid":
            settings = list(ParameterGrid(head.sweep.params))
        else:
            settings = _sample(head.sweep.params, head.sweep.n_trials, head.sweep.seed)
        trials.extend(TrialSpec(name, i, head, {k: _plain(v) for k, v in s.items()},
                                heads.seed) for i, s in enumerate(settings))
    return trials


def _sample(params: dict[str, Any], n_trials: int, seed: int) -> list[dict[str, Any]]:
    spaces = {}
    for name, values in params.items():
        if isinstance(values, list):
            spaces[name] = values
            continue
        spaces[name] = _distribution(*next(iter(values.items())))
    if all(isinstance(v, list) for v in spaces.values()):
        # ParameterSampler samples finite grids without replacement and warns when asked for
        # more points than exist; take them all instead.
        n_trials = min(n_trials, len(ParameterGrid(spaces)))
    return list(ParameterSampler(spaces, n_iter=n_trials, random_state=seed))


def _distribution(kind: str, bounds: list[float]):
    """A scipy.stats distribution over [low, high] (randint: both ends included)."""
    low, high = bounds
    if kind == "loguniform":
        return stats.loguniform(low, high)
    if kind == "uniform":
        return stats.uniform(low, high - low)
    return stats.randint(low, high + 1)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, so parameters validate strictly and print cleanly."""
    return value.item() if isinstance(value, np.generic) else value
