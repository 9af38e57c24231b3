"""The cached features of a dataset view's splits, labelled, in memory or read a chunk at a time.

Features come from the :class:`~cache.FeatureStore` of the view's backbone, labels and splits
from the view. A :class:`LabelledSplit` holds its rows; a :class:`LazySplit` names them and reads
them through :meth:`FeatureStore.to_dask`, one chunk in memory at a time, for heads that train
from caches larger than memory. Both yield ``(x, y)`` chunks, so code that predicts or scores
does not care which it has.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cache import FeatureStore

from ..data.view import DatasetView


@dataclass(frozen=True)
class LabelledSplit:
    """The features of one split: ``x`` (N, h, w, c) float32, ``y`` (N,) int class indices."""

    name: str
    x: np.ndarray
    y: np.ndarray
    sha256: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.y)

    def chunks(self, chunk_rows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The whole split as one ``(x, y)`` chunk (none when empty)."""
        if len(self):
            yield self.x, self.y


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

    def chunks(self, chunk_rows: int | None = None, order: np.ndarray | None = None
               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(x, y) per chunk of ``chunk_rows`` (default: the split's), x (n, h, w, c) float32;
        ``order`` permutes the chunks."""
        if chunk_rows is not None and chunk_rows != self.chunk_rows:
            yield from replace(self, chunk_rows=chunk_rows).chunks(order=order)
            return
        if not len(self):
            return
        store = FeatureStore(self.cache_dir, self.fingerprint)
        if not store.path.is_dir():
            raise FileNotFoundError(
                f"cannot see the feature cache {store.path} from this process; incremental "
                f"heads on a cluster need cache.dir on a filesystem every worker sees")
        lazy = store.to_dask(list(self.sha256), chunk_rows=self.chunk_rows)
        starts = np.cumsum((0, *lazy.chunks[0][:-1]))
        for index in (order if order is not None else range(len(starts))):
            start = int(starts[index])
            x = lazy.blocks[int(index)].compute(scheduler="synchronous")
            yield x, self.y[start:start + len(x)]

    def n_chunks(self, chunk_rows: int | None = None) -> int:
        """How many chunks :meth:`chunks` yields."""
        return -(-len(self) // (chunk_rows or self.chunk_rows))


def split_keys_and_labels(view: DatasetView, split: str, augmented: bool = False
                          ) -> tuple[list[str], np.ndarray]:
    """Cache keys and class indices (N,) int64 of one split, in view order; with
    ``augmented``, followed by the cached augmented views of the split's images (train only)."""
    images = view.select(split)
    keys = [i.sha256 for i in images]
    labels = [view.label_index(i.label) for i in images]
    if augmented:
        for item in view.augmented_views(split):
            keys.append(item.key)
            labels.append(view.label_index(item.image.label))
    return keys, np.array(labels, dtype=np.int64)


def load_split(store: FeatureStore, view: DatasetView, split: str,
               augmented: bool = False) -> LabelledSplit:
    """All features of ``split`` in memory (with ``augmented``, its cached augmented views
    too)."""
    keys, labels = split_keys_and_labels(view, split, augmented)
    x = store.get(keys) if keys else np.empty((0, *store.feature_shape), np.float32)
    return LabelledSplit(split, x, labels, tuple(keys))


def lazy_split(store: FeatureStore, view: DatasetView, split: str,
               augmented: bool = False) -> LazySplit:
    """The rows of ``split`` named, to be read from ``store`` a chunk at a time."""
    keys, labels = split_keys_and_labels(view, split, augmented)
    return LazySplit(split, store.cache_dir, store.fingerprint, tuple(keys), labels)


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
