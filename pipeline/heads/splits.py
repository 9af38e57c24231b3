"""The cached features of a dataset view's splits, labelled, in memory or read a chunk at a time.

Features come from the :class:`~cache.FeatureStore` of each source a head reads (the output
tensor, taps), labels and splits from the view. A :class:`LabelledSplit` holds its rows; a
:class:`LazySplit` names them and reads them through :meth:`FeatureStore.to_dask`, one chunk in
memory at a time, for heads that train from caches larger than memory. Both yield ``(x, y)``
chunks, ``x`` as ``{source: array}``, so code that predicts or scores does not care which it
has.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cache import FeatureStore

from ..data.view import DatasetView
from .features import Features, as_features

# Rows per forward pass when a model scores a split (memory, not maths: any size gives the
# same numbers).
VALIDATION_BATCH = 1024


@dataclass(frozen=True)
class LabelledSplit:
    """The features of one split: ``x`` ``{source: (N, ...)}`` float32 (or the bare (N, h, w,
    c) output tensor), ``y`` (N,) int class indices."""

    name: str
    x: Features | np.ndarray
    y: np.ndarray
    sha256: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.y)

    def chunks(self, chunk_rows: int | None = None
               ) -> Iterator[tuple[Features | np.ndarray, np.ndarray]]:
        """The whole split as one ``(x, y)`` chunk (none when empty)."""
        if len(self):
            yield self.x, self.y


@dataclass(frozen=True)
class LazySplit:
    """One split's rows, read from the cache on demand, a chunk of every source at a time.

    ``fingerprints`` names the store of each source under ``cache_dir``.
    """

    name: str
    cache_dir: Path
    fingerprints: dict[str, str]
    sha256: tuple[str, ...]
    y: np.ndarray
    chunk_rows: int = 1024

    def __len__(self) -> int:
        return len(self.y)

    def chunks(self, chunk_rows: int | None = None, order: np.ndarray | None = None
               ) -> Iterator[tuple[Features, np.ndarray]]:
        """(x ``{source: (n, ...)}``, y) per chunk of ``chunk_rows`` (default: the split's);
        ``order`` permutes the chunks."""
        if chunk_rows is not None and chunk_rows != self.chunk_rows:
            yield from replace(self, chunk_rows=chunk_rows).chunks(order=order)
            return
        if not len(self):
            return
        lazy = {}
        for source, fingerprint in self.fingerprints.items():
            store = FeatureStore(self.cache_dir, fingerprint)
            if not store.path.is_dir():
                raise FileNotFoundError(
                    f"cannot see the feature cache {store.path} from this process; "
                    f"incremental heads on a cluster need cache.dir on a filesystem every "
                    f"worker sees")
            lazy[source] = store.to_dask(list(self.sha256), chunk_rows=self.chunk_rows)
        first = next(iter(lazy.values()))
        starts = np.cumsum((0, *first.chunks[0][:-1]))
        for index in (order if order is not None else range(len(starts))):
            start = int(starts[index])
            x = {source: array.blocks[int(index)].compute(scheduler="synchronous")
                 for source, array in lazy.items()}
            yield x, self.y[start:start + len(next(iter(x.values())))]

    def n_chunks(self, chunk_rows: int | None = None) -> int:
        """How many chunks :meth:`chunks` yields."""
        return -(-len(self) // (chunk_rows or self.chunk_rows))


def split_keys_and_labels(view: DatasetView, split: str, augmented: bool = False
                          ) -> tuple[list[str], np.ndarray]:
    """Cache keys and class indices (N,) int64 of one split, in view order; with
    ``augmented``, followed by the cached augmented copies of the split's images (train only)."""
    images = view.select(split)
    keys = [i.sha256 for i in images]
    labels = [view.label_index(i.label) for i in images]
    if augmented:
        for item in view.augmented_copies(split):
            keys.append(item.key)
            labels.append(view.label_index(item.image.label))
    return keys, np.array(labels, dtype=np.int64)


def load_split(stores: dict[str, FeatureStore], view: DatasetView, split: str,
               augmented: bool = False) -> LabelledSplit:
    """All features of ``split`` in memory, one array per source of ``stores`` (with
    ``augmented``, its cached augmented copies too)."""
    keys, labels = split_keys_and_labels(view, split, augmented)
    x = {source: store.get(keys) if keys else
         np.empty((0, *store.feature_shape), np.float32) for source, store in stores.items()}
    return LabelledSplit(split, x, labels, tuple(keys))


def lazy_split(stores: dict[str, FeatureStore], view: DatasetView, split: str,
               augmented: bool = False) -> LazySplit:
    """The rows of ``split`` named, to be read from ``stores`` a chunk at a time."""
    keys, labels = split_keys_and_labels(view, split, augmented)
    folders = {store.cache_dir for store in stores.values()}
    (cache_dir,) = folders
    return LazySplit(split, cache_dir, {source: store.fingerprint
                                        for source, store in stores.items()},
                     tuple(keys), labels)


def subset(x: Features | np.ndarray, rows) -> Features:
    """The rows ``rows`` (a slice or indices) of every source of ``x``."""
    return {source: array[rows] for source, array in as_features(x).items()}


@dataclass(frozen=True)
class TrainingData:
    """What trials train and select on: training and validation splits, never test.

    ``train``/``validation`` are in memory (None when no head needs them there);
    ``lazy_train``/``lazy_validation`` name the same rows for heads that read a chunk at a time.
    """

    n_classes: int
    train: LabelledSplit | None = None
    validation: LabelledSplit | None = None
    lazy_train: LazySplit | None = None
    lazy_validation: LazySplit | None = None

    def splits(self, lazy: bool) -> tuple[LabelledSplit | LazySplit, LabelledSplit | LazySplit]:
        """(train, validation), read a chunk at a time with ``lazy``, else in memory."""
        if lazy:
            return self.lazy_train, self.lazy_validation
        return self.train, self.validation
