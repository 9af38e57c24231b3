"""Every trial of the configured heads, each with its kind resolved once.

Each head in ``stages.heads.models`` gives one trial (its declared parameters) or, with a
``sweep``, one per grid point or random draw (scikit-learn's ParameterGrid / ParameterSampler).
A :class:`Trial` pairs the trial's settings (:class:`~pipeline.heads.trial.TrialSpec`) with
the :class:`~pipeline.heads.kind.HeadKind` that fits them and says, once, whether it reads the
cache a chunk at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import HeadsConfig
from ..config.heads import feature_parts
from ..optional_imports import DATAFRAME_LIBRARIES, modules_marked_absent
from .kind import FittedHead, HeadKind
from .registry import head_kind
from .splits import LabelledSplit, LazySplit, Reading
from .trial import TrialSpec

with modules_marked_absent(DATAFRAME_LIBRARIES):
    from scipy import stats
    from sklearn.model_selection import ParameterGrid, ParameterSampler


@dataclass(frozen=True, eq=False)
class Trial:
    """A trial's settings and the kind that fits them (resolved when the trial is made).

    Trials compare by identity: a sweep holds each once, and one sent to a dask worker is a
    copy of it, not another trial."""

    spec: TrialSpec
    kind: HeadKind = field(init=False, repr=False)
    #: rows per chunk when the trial reads the cache a chunk at a time, else None
    chunk_rows: int | None = field(init=False)

    def __post_init__(self) -> None:
        kind = head_kind(self.spec.config.kind)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "chunk_rows", kind.chunk_rows(self.spec))

    @property
    def head(self) -> str:
        """The head's name in ``stages.heads.models``."""
        return self.spec.head

    @property
    def index(self) -> int:
        """The trial's number within its head's sweep (0 without a sweep)."""
        return self.spec.index

    @property
    def reads_in_chunks(self) -> bool:
        """True when the trial trains and scores from the cache a chunk at a time (lazy
        splits), False when it takes whole splits in memory."""
        return self.chunk_rows is not None

    @property
    def sources(self) -> tuple[str, ...]:
        """The cached sources the trial reads: the output tensor, taps."""
        return self.spec.sources

    @property
    def reading(self) -> Reading:
        """What the trial reads of the training and validation splits: a chunk at a time,
        the rows of its feature setting, or the raw features of its sources."""
        if self.reads_in_chunks:
            return Reading(self.sources, lazy=True)
        if self.kind.takes_rows:
            return Reading(self.sources, feature_parts(self.spec.setting("features")),
                           self.spec.setting("normalize"))
        return Reading(self.sources)

    def describe(self) -> dict[str, Any]:
        """Everything that defines this trial, as plain data for leaderboards."""
        return self.kind.describe(self.spec)

    def fit(self, train: LabelledSplit | LazySplit, validation: LabelledSplit | LazySplit,
            n_classes: int) -> FittedHead:
        """Fit the trial on ``train``; ``validation`` serves early stopping only (dense).
        ValueError, before any work, when ``train`` has more rows than the trial takes
        (:meth:`check_train_rows`)."""
        self.check_train_rows(len(train))
        return self.kind.fit(self.spec, train, validation, n_classes)

    def check_train_rows(self, count: int) -> None:
        """ValueError when ``count`` training rows are more than the head's
        ``max_train_rows`` (or its kind's limit) allow."""
        limit = self.spec.config.max_train_rows or self.kind.max_train_rows
        if limit is not None and count > limit:
            reason = (f": {self.kind.max_train_rows_reason}"
                      if self.spec.config.max_train_rows is None else "")
            raise ValueError(f"{count:,} training rows, more than the {limit:,} a "
                             f"{self.kind.name} head fits on (stages.heads.models."
                             f"{self.head}.max_train_rows){reason}")

    @property
    def expected_cost(self) -> int:
        """A rough rank of the fit time: dask starts the costly trials first, so a long one
        does not begin alone at the end while the other workers sit idle."""
        return self.kind.relative_cost * (2 if self.spec.setting("features") == "flatten"
                                          else 1)


def expand_trials(heads: HeadsConfig) -> list[Trial]:
    """Every trial of every head, in declaration order, then grid or sampling order."""
    trials = []
    for name, head in heads.models.items():
        if head.sweep is None:
            settings: list[dict[str, Any]] = [{}]
        elif head.sweep.method == "grid":
            settings = list(ParameterGrid(head.sweep.params))
        else:
            settings = _sample(head.sweep.params, head.sweep.n_trials, head.sweep.seed)
        trials.extend(Trial(TrialSpec(name, i, head, {k: _plain(v) for k, v in s.items()},
                                      heads.seed)) for i, s in enumerate(settings))
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
