"""Heads trained from the on-disk cache a chunk at a time, for caches larger than memory.

A :class:`LazySplit` names its rows (cache folder, fingerprint, sha256, labels) instead of
holding them; its features are read through :meth:`FeatureStore.to_dask`, one chunk of
``chunk_rows`` rows in memory at a time. ``sgd`` heads with ``incremental`` set are fitted
with ``partial_fit``: a first pass fits the optional StandardScaler, then every epoch visits the
chunks in a seeded random order. Peak memory is a few chunks, whatever the cache size.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from cache import FeatureStore

from .features import FeatureView
from .head_models import FittedHead, TrialSpec, build_estimator


@dataclass(frozen=True)
class LazySplit:
    """One split's rows, read from the cache on demand: (N, h, w, c) float32 in chunks."""

    name: str
    cache_dir: Path
    fingerprint: str
    sha256: tuple[str, ...]
    y: np.ndarray
    chunk_rows: int = 1024

    def __len__(self) -> int:
        return len(self.y)

    def chunks(self, order: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(x, y) per chunk, x (n, h, w, c) float32; ``order`` permutes the chunks."""
        if not len(self):
            return
        store = FeatureStore(self.cache_dir, self.fingerprint)
        if not store.path.is_dir():
            raise FileNotFoundError(
                f"cannot see the feature cache {store.path} from this process; incremental "
                f"heads on a cluster need cache.dir on a filesystem every worker sees")
        lazy = store.to_dask(
            list(self.sha256), chunk_rows=self.chunk_rows)
        starts = np.cumsum((0, *lazy.chunks[0][:-1]))
        for index in (order if order is not None else range(len(starts))):
            start = int(starts[index])
            x = lazy.blocks[int(index)].compute(scheduler="synchronous")
            yield x, self.y[start:start + len(x)]

    def n_chunks(self) -> int:
        """How many chunks :meth:`chunks` yields."""
        return -(-len(self) // self.chunk_rows)


def fit_incremental(spec: TrialSpec, train: LazySplit, n_classes: int) -> FittedHead:
    """Fit an ``sgd`` head with partial_fit over ``train``'s chunks (bounded memory)."""
    if not len(train):
        raise ValueError("an incremental head needs at least one training row")
    started = time.perf_counter()
    train = replace(train, chunk_rows=spec.config.incremental.chunk_rows)
    rng = np.random.default_rng(spec.seed)
    view = FeatureView(spec.setting("features"))
    scaler = StandardScaler() if spec.setting("scale") else None
    if scaler is not None:
        for x, _ in train.chunks():
            scaler.partial_fit(view.transform(x))
    model = build_estimator(spec.config.kind, spec.estimator_params(), spec.seed)
    classes = np.arange(n_classes)
    for _ in range(spec.config.incremental.epochs):
        for x, y in train.chunks(order=rng.permutation(train.n_chunks())):
            rows = view.transform(x)
            if scaler is not None:
                rows = scaler.transform(rows)
            shuffle = rng.permutation(len(rows))
            model.partial_fit(rows[shuffle], y[shuffle], classes=classes)
    # FeatureView learns nothing; fitting it on a row of the last chunk records the input width.
    steps = [("features", view.fit(x[:1]))]
    if scaler is not None:
        steps.append(("scale", scaler))
    steps.append(("model", model))
    return FittedHead(spec.config.kind, Pipeline(steps), n_classes,
                      time.perf_counter() - started)


def predict_lazy(head: FittedHead, split: LazySplit, spec: TrialSpec | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """(predicted (N,) class indices, probabilities (N, C) or None), a chunk at a time
    (``spec``'s ``incremental.chunk_rows`` rows when given)."""
    if spec is not None and spec.config.incremental is not None:
        split = replace(split, chunk_rows=spec.config.incremental.chunk_rows)
    predicted, probabilities = [], []
    for x, _ in split.chunks():
        predicted.append(head.predict(x))
        probabilities.append(head.predict_proba(x))
    if not predicted:
        return np.empty(0, np.int64), None
    proba = None if probabilities[0] is None else np.concatenate(probabilities)
    return np.concatenate(predicted), proba

