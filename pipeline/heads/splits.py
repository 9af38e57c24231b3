"""The cached features of a dataset view's splits, labelled, in memory or read a chunk at a time.

Features come from the :class:`~cache.FeatureStore` of each source a head reads (the output
tensor, taps), labels and splits from the view. A :class:`LabelledSplit` holds its rows (raw,
``{source: array}``, or rows a head's FeatureRows already made, :class:`PreparedRows`); a
:class:`LazySplit` names them and reads them from the stores one chunk at a time, for heads
that train from caches larger than memory. Both yield ``(x, y)``
chunks, so code that predicts or scores does not care which it has. :class:`TrainingData`
gives a sweep's trials what each reads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cache import FeatureStore, StoreRows

from ..data.view import DatasetView
from .features import (
    Features,
    PreparedRows,
    as_features,
    feature_rows,
    part_width,
    source_of,
)

# Rows per forward pass when a model scores a split (memory, not maths: any size gives the
# same numbers).
VALIDATION_BATCH = 1024
#: The fewest blocks of neighbouring rows a shuffled chunk draws
#: (:meth:`SplitReader.chunk_positions`): more mix the classes better, fewer read faster.
BLOCKS_PER_CHUNK = 64


@dataclass(frozen=True)
class LabelledSplit:
    """The features of one split: ``x`` ``{source: (N, ...)}`` float32 (or the bare (N, h, w,
    c) output tensor, or :class:`PreparedRows`), ``y`` (N,) int class indices."""

    name: str
    x: Features | np.ndarray | PreparedRows
    y: np.ndarray
    sha256: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.y)

    def chunks(self, chunk_rows: int | None = None
               ) -> Iterator[tuple[Features | np.ndarray, np.ndarray]]:
        """The whole split as one ``(x, y)`` chunk (none when empty)."""
        if len(self):
            yield self.x, self.y

    def sample(self, rows: int, seed: int = 0) -> LabelledSplit:
        """At most ``rows`` of the split's rows, drawn at random (seeded), in split order;
        the split itself when it has no more."""
        if len(self) <= rows:
            return self
        picked = _sample_positions(len(self), rows, seed)
        return LabelledSplit(self.name, subset(self.x, picked), self.y[picked],
                             tuple(self.sha256[i] for i in picked))


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

    def chunks(self, chunk_rows: int | None = None, rng: np.random.Generator | None = None
               ) -> Iterator[tuple[Features, np.ndarray]]:
        """(x ``{source: (n, ...)}``, y) per chunk of ``chunk_rows`` rows (default: the
        split's): in view order, or with ``rng`` shuffled (:meth:`SplitReader.chunk_positions`).
        Reads through :meth:`reader`."""
        if len(self):
            yield from self.reader().chunks(chunk_rows, rng)

    def reader(self) -> SplitReader:
        """The split's rows with every source's images located and checked once, made on the
        first call and kept by this object, not pickled (at 10^5 images locating and checking
        a split's rows takes about 0.3 s a source; a streamed dense head reads each of its
        splits twice)."""
        reader = self.__dict__.get("_reader")
        if reader is None:
            reader = self.__dict__["_reader"] = SplitReader(
                self, {source: self.store(source).rows(self.sha256)
                       for source in self.fingerprints})
        return reader

    def __getstate__(self) -> dict:
        # what this process located stays here: another process locates in its own stores
        return {key: value for key, value in self.__dict__.items() if key != "_reader"}

    def store(self, source: str) -> FeatureStore:
        """The feature store of ``source`` (FileNotFoundError when this process cannot see
        it: a worker of a remote scheduler without the cache's filesystem)."""
        store = FeatureStore(self.cache_dir, self.fingerprints[source])
        if not store.path.is_dir():
            raise FileNotFoundError(
                f"cannot see the feature cache {store.path} from this process; heads that "
                f"read the cache on a cluster need cache.dir on a filesystem every worker "
                f"sees")
        return store

    def sample(self, rows: int, seed: int = 0) -> LazySplit:
        """At most ``rows`` of the split's rows, drawn at random (seeded), in split order;
        the split itself when it has no more."""
        if len(self) <= rows:
            return self
        picked = _sample_positions(len(self), rows, seed)
        return replace(self, sha256=tuple(self.sha256[i] for i in picked), y=self.y[picked])


class SplitReader:
    """The rows of a :class:`LazySplit` read from its sources' stores by position: each
    source's images located and checked once (:class:`~cache.StoreRows`, or anything with
    its ``read(positions)`` and ``storage_order()``), so reading a chunk costs reading its
    rows, epoch after epoch."""

    def __init__(self, split: LazySplit, sources: dict[str, StoreRows]):
        self.split = split
        self.sources = sources

    def read(self, positions: np.ndarray) -> tuple[Features, np.ndarray]:
        """(x ``{source: (n, ...)}`` float32, y (n,)) of the rows at ``positions`` of the
        split, in that order."""
        positions = np.asarray(positions, dtype=np.int64)
        return ({source: rows.read(positions) for source, rows in self.sources.items()},
                self.split.y[positions])

    def chunks(self, chunk_rows: int | None = None, rng: np.random.Generator | None = None
               ) -> Iterator[tuple[Features, np.ndarray]]:
        """(x, y) of each chunk of :meth:`chunk_positions`, read as it is reached."""
        for positions in self.chunk_positions(chunk_rows, rng):
            yield self.read(positions)

    def chunk_positions(self, chunk_rows: int | None = None,
                        rng: np.random.Generator | None = None) -> list[np.ndarray]:
        """The split's positions cut into chunks of ``chunk_rows`` (default: the split's),
        every row in exactly one: in view order; or, with ``rng``, each chunk a random draw
        of blocks of rows that neighbour in the store (the first source's), in random order.

        Views list images by class folder, so chunks in view order hold one class or two: a
        head trained a chunk at a time would learn one class, then the next. Blocks of
        neighbours (:data:`BLOCKS_PER_CHUNK` a chunk or more) keep the reads to a few runs of
        rows per shard, and a chunk draws its blocks from the whole split."""
        rows = chunk_rows or self.split.chunk_rows
        if rng is None:
            return [np.arange(start, min(start + rows, len(self.split)))
                    for start in range(0, len(self.split), rows)]
        order = (next(iter(self.sources.values())).storage_order() if self.sources
                 else np.arange(len(self.split)))
        block = max(1, rows // BLOCKS_PER_CHUNK)
        blocks = [order[start:start + block] for start in range(0, len(order), block)]
        drawn = np.concatenate([blocks[i] for i in rng.permutation(len(blocks))]) \
            if blocks else order
        return [rng.permutation(drawn[start:start + rows])
                for start in range(0, len(drawn), rows)]


def _sample_positions(total: int, rows: int, seed: int) -> np.ndarray:
    """``rows`` distinct positions of ``range(total)``, drawn with ``seed``, ascending (reads
    of the cache stay in order)."""
    return np.sort(np.random.default_rng(seed).choice(total, size=rows, replace=False))


def split_keys_and_labels(view: DatasetView, split: str, augmented: bool = False
                          ) -> tuple[list[str], np.ndarray]:
    """Cache keys and class indices (N,) int64 of one split, in view order; with
    ``augmented``, followed by the cached augmented copies of the split's images (train only)."""
    images = view.select(split)
    keys, labels = images.keys(), images.label.astype(np.int64)
    if augmented:
        copies = view.augmented_copies(split)
        keys += [item.key for item in copies]
        labels = np.concatenate([labels, np.array(
            [view.label_index(item.image.label) for item in copies], np.int64)])
    return keys, labels


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


def subset(x: Features | np.ndarray | PreparedRows, rows) -> Features | PreparedRows:
    """The rows ``rows`` (a slice or indices) of every source of ``x`` (of prepared rows:
    those rows)."""
    if isinstance(x, PreparedRows):
        return x[rows]
    return {source: array[rows] for source, array in as_features(x).items()}


@dataclass(frozen=True)
class Reading:
    """What a trial reads of the training and validation splits: the raw features of
    ``sources`` in memory; with ``parts``, the rows :class:`FeatureRows` makes of them
    (``parts`` normalised by ``normalize``); with ``lazy``, the cache a chunk at a time."""

    sources: tuple[str, ...]
    parts: tuple[str, ...] | None = None
    normalize: str = "none"
    lazy: bool = False


#: What a TrainingData keeps for the process it is in, never pickled.
_PROCESS_LOCAL = ("_held", "_stores", "_lock")


@dataclass(frozen=True, eq=False)
class TrainingData:
    """What trials train and select on: the training and validation rows, never test.

    The splits are named (:class:`LazySplit`: keys and labels) and read from the cache by the
    process that runs the trials, for what each trial reads (:class:`Reading`): a dask worker
    reads its own, so the features are not copied to every worker. A process keeps the
    readings it made while they fit in ``memory_budget`` bytes together, the least recently
    used let go first, so trials of one feature setting share one reading. ``carried``, where
    set, holds the raw features of every source the trials read and travels with this
    object, for workers that cannot see the cache (a remote scheduler's).
    """

    classes: tuple[str, ...]
    train: LazySplit
    validation: LazySplit
    #: the shape of one image's features, per source: (h, w, c) for the output, (c,) for a tap
    shapes: dict[str, tuple[int, ...]]
    carried: dict[str, LabelledSplit] | None = None
    #: bytes of features one process may hold (None: no limit); a reading of raw features
    #: larger than this is streamed by the kinds that can (the dense head)
    memory_budget: int | None = None
    #: stream every reading of raw features, whatever its size (the child process that fits
    #: the trials that load a runtime: :func:`~pipeline.heads.sweep.fit_and_score_apart`)
    stream_all: bool = False

    def __post_init__(self) -> None:
        self.__setstate__({})

    def __getstate__(self) -> dict:
        # what this process has read, and its open stores, stay here; a worker has its own
        return {key: value for key, value in self.__dict__.items()
                if key not in _PROCESS_LOCAL}

    def __setstate__(self, state: dict) -> None:
        # a worker started with several threads may run two trials at once
        self.__dict__.update(state, _held=OrderedDict(), _stores={}, _lock=threading.RLock())

    @property
    def n_classes(self) -> int:
        """How many classes the heads tell apart."""
        return len(self.classes)

    def width(self, reading: Reading) -> int:
        """Numbers per image that ``reading`` holds: its rows' length, or every number of its
        sources' raw features."""
        if reading.parts is not None:
            return sum(part_width(part, self.shapes[source_of(part)]) for part in reading.parts)
        return sum(int(np.prod(self.shapes[source])) for source in reading.sources)

    def nbytes(self, reading: Reading) -> int:
        """Bytes that ``reading`` holds in memory, training and validation together
        (float32)."""
        return (len(self.train) + len(self.validation)) * self.width(reading) * 4

    def streams(self, reading: Reading) -> bool:
        """Whether ``reading`` (of raw features: a dense head's) is read a chunk at a time:
        when it would hold more than :attr:`memory_budget`, or :attr:`stream_all` says so,
        and its features are not carried."""
        return (reading.parts is None and self.carried is None
                and (self.stream_all or self.memory_budget is not None
                     and self.nbytes(reading) > self.memory_budget))

    def stream_rows(self, reading: Reading) -> int:
        """Rows per chunk when ``reading`` streams: a sixteenth of the budget (of the
        reading, without one), 256 to 16,384 rows (a chunk is read, shuffled and cut into
        batches at once)."""
        per_row = self.width(reading) * 4
        budget = self.memory_budget or self.nbytes(reading)
        return int(min(16_384, max(256, budget // 16 // per_row)))

    def within(self, memory_budget: int | None) -> TrainingData:
        """This data, each process holding at most ``memory_budget`` bytes."""
        return replace(self, memory_budget=memory_budget)

    def carrying(self, sources: tuple[str, ...]) -> TrainingData:
        """This data with the raw features of ``sources`` read now and carried along."""
        carried = {split.name: LabelledSplit(split.name, {
            source: self._read(split, source, slice(0, len(split))) for source in sources},
            split.y, split.sha256) for split in (self.train, self.validation)}
        return replace(self, carried=carried)

    def splits(self, reading: Reading
               ) -> tuple[LabelledSplit | LazySplit, LabelledSplit | LazySplit]:
        """(train, validation) as ``reading`` says: named, streamed in chunks, or in memory
        (read once, and kept while the budget allows)."""
        if reading.lazy:
            return self.train, self.validation
        if self.streams(reading):
            rows = self.stream_rows(reading)
            return (replace(self.train, chunk_rows=rows),
                    replace(self.validation, chunk_rows=rows))
        with self._lock:
            held = self._held.get(reading)
            if held is not None:
                self._held.move_to_end(reading)
                return held
            needed = self._holds(reading)
            while self._held and self.memory_budget is not None and \
                    sum(map(self._holds, self._held)) + needed > self.memory_budget:
                self._held.popitem(last=False)  # let go before reading more
            held = self._held[reading] = (self._labelled(self.train, reading),
                                          self._labelled(self.validation, reading))
            return held

    def let_go(self, reading: Reading) -> None:
        """Let go of ``reading``'s rows if this process holds them (no later trial reads
        them)."""
        with self._lock:
            self._held.pop(reading, None)

    def release(self) -> None:
        """Let go of every reading this process holds, and of its open stores."""
        with self._lock:
            self._held.clear()
            self._stores.clear()

    def _holds(self, reading: Reading) -> int:
        """Bytes that holding ``reading`` adds: none for raw features carried along (they are
        views of what is carried)."""
        return 0 if reading.parts is None and self.carried is not None else \
            self.nbytes(reading)

    def _labelled(self, split: LazySplit, reading: Reading) -> LabelledSplit:
        whole = slice(0, len(split))
        if reading.parts is None:
            x = {source: self._read(split, source, whole) for source in reading.sources}
        else:
            rows = feature_rows(lambda source, images: self._read(split, source, images),
                                self.shapes, reading.parts, reading.normalize, len(split))
            x = PreparedRows(rows, reading.parts, reading.normalize)
        return LabelledSplit(split.name, x, split.y, split.sha256)

    def _read(self, split: LazySplit, source: str, images: slice) -> np.ndarray:
        """(n, ...) float32 features of ``source`` for the rows ``images`` of ``split``."""
        if self.carried is not None:
            return self.carried[split.name].x[source][images]
        keys = split.sha256[images]
        if not keys:
            return np.empty((0, *self.shapes[source]), np.float32)
        # one store per source for every read: each opens the entry index (and maps it)
        fingerprint = split.fingerprints[source]
        if fingerprint not in self._stores:
            self._stores[fingerprint] = split.store(source)
        return self._stores[fingerprint].get(list(keys))
