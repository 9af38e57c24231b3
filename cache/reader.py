"""FeatureStore: read the features of one backbone fingerprint, content-addressed by sha256.

On disk, under ``<cache dir>/<fingerprint>/``::

    fingerprint.json        what the fingerprint is made of (weights hash, input size, ...)
    manifest.jsonl          the journal of committed shards (see cache.manifest)
    shard-*.h5              immutable HDF5 shards (see cache.shard)
    views/<id>.json         dataset views that reference these entries (written by the pipeline)
    rejects.jsonl           images a writer could not extract, and why
    .write.lock             held by the one process allowed to add shards (see cache.lock)

Readers take no lock: a shard is immutable once it has its final name, and a torn manifest
line is ignored. Writing is :mod:`cache.writer`'s job; this module never imports it.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .errors import CacheError, MissingFeaturesError
from .files import sha256_bytes, sha256_text
from .index import EntryIndex, open_index
from .manifest import (
    DAMAGED_NAME,
    MANIFEST_NAME,
    Manifest,
    ShardRecord,
    load_manifest,
    read_damaged,
)
from .shard import (
    ShardLayout,
    list_shard_files,
    read_rows_at,
    read_shard_fingerprint_and_sha256,
    read_shard_layout,
    read_shard_rows,
)

DESCRIPTION_NAME = "fingerprint.json"
REJECTS_NAME = "rejects.jsonl"
VIEWS_DIR = "views"


@dataclass(frozen=True)
class StoreStats:
    """Counts and sizes of one fingerprint's cache."""

    fingerprint: str
    entries: int
    shards: int
    bytes: int
    views: int
    unlisted_shards: int  # complete shards the manifest does not list yet (after a crash)


class FeatureStore:
    """The cached features of one backbone fingerprint, read without any lock.

    ``FeatureStore(cache_dir, fingerprint)`` opens (lazily) ``cache_dir/fingerprint``; nothing is
    created until a writer (:func:`cache.open_writer`) commits its first shard.
    """

    def __init__(self, cache_dir: str | os.PathLike, fingerprint: str):
        if not fingerprint or "/" in fingerprint or fingerprint.startswith("."):
            raise ValueError(f"not a fingerprint id: {fingerprint!r}")
        self.cache_dir = Path(cache_dir)
        self.fingerprint = fingerprint
        self.path = self.cache_dir / fingerprint
        self._manifest: Manifest | None = None
        self._unlisted: list[str] = []
        self._indexed: _IndexedState | None | bool = None  # False: the index cannot answer

    def __getstate__(self) -> dict:
        # what was read from disk (a database connection among it) stays in this process
        return {**self.__dict__, "_manifest": None, "_unlisted": [], "_indexed": None}

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.cache_dir)!r}, {self.fingerprint!r})"

    @property
    def description(self) -> dict:
        """The contents of ``fingerprint.json`` ({} when the store has never been written)."""
        try:
            return json.loads((self.path / DESCRIPTION_NAME).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}

    def refresh(self) -> None:
        """Forget what was read from disk; the next access reads the manifest again."""
        self._manifest = None
        if isinstance(self._indexed, _IndexedState):
            self._indexed.index.close()
        self._indexed = None

    def _fast(self) -> _IndexedState | None:
        """The entry index's view of the store, where it answers exactly what the manifest
        would: not when a shard file it lists is gone or verify recorded damaged entries
        (rare states whose entries the full manifest sorts out), nor without a writable
        database. None then: use :meth:`_state`."""
        if self._indexed is None:
            self._indexed = _IndexedState.of(self) or False
        return self._indexed or None

    def _state(self) -> Manifest:
        if self._manifest is None:
            manifest = load_manifest(self.path)
            # A shard renamed into place just before a crash is complete but not yet in the
            # manifest: read its sha256 column so its features count as cached.
            self._unlisted = [p.name for p in list_shard_files(self.path)
                              if p.name not in manifest.shards]
            for name in self._unlisted:
                try:
                    fingerprint, shas = read_shard_fingerprint_and_sha256(self.path / name)
                except (OSError, KeyError):
                    continue
                if fingerprint != self.fingerprint:
                    continue  # not ours; the next writer moves it aside
                manifest.add(ShardRecord(name=name, sha256=tuple(shas), checksums=(), bytes=0))
            # a shard file gone: its entries are missing, not broken
            manifest.remove([n for n in manifest.shards if not (self.path / n).exists()])
            manifest.forget_damaged(read_damaged(self.path))  # extract computes them again
            self._manifest = manifest
        return self._manifest

    def version(self) -> str:
        """A short token that changes whenever entries may have been added to or removed from
        the store: from the manifest journal's inode and size, the names of the shard files and
        the damaged entries recorded (the record's bytes). Costs a directory listing, reads no
        entry; a caller that recorded it can tell that nothing was removed since (nothing else
        removes an entry: gc and repairs rewrite the journal, verify records damage)."""
        try:
            journal = (self.path / MANIFEST_NAME).stat()
            state = [journal.st_ino, journal.st_size]
        except FileNotFoundError:
            state = [0, 0]
        try:
            damaged = sha256_bytes((self.path / DAMAGED_NAME).read_bytes())
        except FileNotFoundError:
            damaged = ""
        state += [damaged, *sorted(p.name for p in list_shard_files(self.path))]
        return sha256_text(json.dumps(state))[:32]

    def _with_index(self, use, fallback):
        """``use(indexed state)`` where the index can answer, else (or when its database
        fails mid-way: it is a shortcut only) ``fallback()`` from the journal."""
        fast = self._fast()
        if fast is not None:
            try:
                return use(fast)
            except sqlite3.Error:
                fast.index.close()
                self._indexed = False
        return fallback()

    def __len__(self) -> int:
        return self._with_index(lambda fast: fast.index.count() + len(fast.unlisted_only()),
                                lambda: len(self._state().entries))

    def __contains__(self, sha256: object) -> bool:
        if not isinstance(sha256, str):
            return False
        return not self.missing([sha256])

    def shards(self) -> list[ShardRecord]:
        """Committed shards in commit order (plus complete shards found but not yet listed)."""
        return list(self._state().shards.values())

    def sha256s(self) -> list[str]:
        """Every cached image sha256, in storage order."""
        return self._with_index(lambda fast: [*fast.index.sha256s(), *fast.unlisted_only()],
                                lambda: list(self._state().entries))

    def _entries(self, sha256: Iterable[str]) -> dict[str, tuple[str, int]]:
        """(shard, row) of each of ``sha256`` that is cached (absent ones left out)."""
        wanted = list(dict.fromkeys(sha256))

        def indexed(fast: _IndexedState) -> dict[str, tuple[str, int]]:
            found = fast.index.locate(wanted)
            found.update((s, fast.unlisted[s]) for s in wanted
                         if s not in found and s in fast.unlisted)
            return found

        def journal() -> dict[str, tuple[str, int]]:
            entries = self._state().entries
            return {s: entries[s] for s in wanted if s in entries}

        return self._with_index(indexed, journal)

    def missing(self, sha256: Iterable[str]) -> list[str]:
        """The sha256 of ``sha256`` that have no features here, unique, in first-seen order."""
        wanted = list(dict.fromkeys(sha256))

        def journal() -> list[str]:
            found = self._entries(wanted)
            return [s for s in wanted if s not in found]

        def indexed(fast: _IndexedState) -> list[str]:
            absent = fast.index.missing(wanted)
            return [s for s in absent if s not in fast.unlisted] if fast.unlisted else absent

        return self._with_index(indexed, journal)

    def locate(self, sha256: Sequence[str]) -> list[tuple[str, int]]:
        """(shard name, row) of each sha256; :class:`MissingFeaturesError` names absent ones."""
        entries = self._entries(sha256)
        absent = [s for s in sha256 if s not in entries]
        if absent:
            raise MissingFeaturesError(
                f"{len(absent)} image(s) have no features in {self.path} "
                f"(first: {', '.join(absent[:3])}); run `pipeline run extract` first")
        return [entries[s] for s in sha256]

    def get(self, sha256: Sequence[str]) -> np.ndarray:
        """Features of ``sha256`` in the order given, as (N, h, w, c) float32 in memory
        (float32 whatever the store keeps: float16 rows are widened, exactly)."""
        sha256 = list(sha256)
        return read_located(self.path, self.locate(sha256), self.feature_shape, sha256)

    def rows(self, sha256: Sequence[str]) -> StoreRows:
        """The features of ``sha256`` (a fixed list: a split's images), located and checked
        once, to be read any number of times, any of them at a time (:class:`StoreRows`)."""
        return StoreRows(self, sha256)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one entry, e.g. (4, 4, 512) for VGG16 at 150x150."""
        shape = self.description.get("output_shape")
        if shape:
            return tuple(int(d) for d in shape)
        shards = list_shard_files(self.path)
        if not shards:
            raise CacheError(f"{self.path} holds no features yet")
        with h5py.File(shards[0], "r") as f:
            return tuple(f["features"].shape[1:])

    def to_dask(self, sha256: Sequence[str], chunk_rows: int = 1024):
        """Features of ``sha256`` as a lazy ``dask.array`` (N, h, w, c) float32.

        Nothing is read until a chunk is computed; each chunk of ``chunk_rows`` rows reads only
        its own rows from the shards, so memory stays bounded by the chunk size. The tasks carry
        shard paths and rows, not the store, so they run on any dask worker that sees the files.
        """
        import dask
        import dask.array as da

        sha256 = list(sha256)
        located = self.locate(sha256)
        shape = self.feature_shape
        if not located:
            return da.zeros((0, *shape), dtype=np.float32)
        parts = []
        for start in range(0, len(located), chunk_rows):
            chunk = located[start:start + chunk_rows]
            block = dask.delayed(read_located, pure=True)(self.path, chunk, shape,
                                                          sha256[start:start + chunk_rows])
            parts.append(da.from_delayed(block, shape=(len(chunk), *shape), dtype=np.float32))
        return da.concatenate(parts, axis=0)

    def rejected(self, context: str) -> dict[str, str]:
        """sha256 -> reason for images a writer gave up on under the same ``context``.

        The context is the caller's key for 'would it fail again' (for the pipeline, the
        decode options), so an image refused under one setting is tried again under another.
        """
        rejects: dict[str, str] = {}
        try:
            lines = (self.path / REJECTS_NAME).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return rejects
        for line in lines:
            try:
                item = json.loads(line)
            except ValueError:
                continue  # a torn last line after a crash
            if item.get("context") == context:
                rejects[item["sha256"]] = item["reason"]
        return rejects

    def views_dir(self) -> Path:
        """Folder of the dataset views that reference this store's entries."""
        return self.path / VIEWS_DIR

    def stats(self) -> StoreStats:
        """Entry, shard and byte counts, read from disk now."""
        self.refresh()
        entries = len(self)
        fast = self._indexed if isinstance(self._indexed, _IndexedState) else None
        unlisted = len(fast.unlisted_shards) if fast is not None else len(self._unlisted)
        files = list_shard_files(self.path)
        views = list(self.views_dir().glob("*.json")) if self.views_dir().is_dir() else []
        return StoreStats(fingerprint=self.fingerprint, entries=entries,
                          shards=len(files), bytes=sum(p.stat().st_size for p in files),
                          views=len(views), unlisted_shards=unlisted)


#: Images located in one query of the index while a :class:`StoreRows` is made (memory only)
_LOCATED_TOGETHER = 100_000


class StoreRows:
    """The features of a fixed list of images in one store, for reading them many times in
    any order and subset (a head training from the cache, epoch after epoch).

    Each image is located once (its shard and row, two int32) and checked once against its
    shard's own sha256 column, and each shard's layout is read once: a read then opens
    each shard it touches and reads runs of neighbouring rows straight from the file
    (:func:`~cache.shard.read_rows_at`), with no index lookup or HDF5 selection. A shard is
    immutable under its name, except a partition's, replaced when its partition runs again: a
    shard replaced since its layout was read, or removed (by ``pipeline cache gc``), fails the
    read with :class:`CacheError`.
    """

    def __init__(self, store: FeatureStore, sha256: Sequence[str]):
        sha256 = list(sha256)
        self.path = store.path
        self.feature_shape = store.feature_shape
        self.shard = np.empty(len(sha256), np.int32)
        self.row = np.empty(len(sha256), np.int32)
        number: dict[str, int] = {}  # shards numbered as they are met
        # located a batch at a time: the index's answer costs a few hundred bytes an image
        for start in range(0, len(sha256), _LOCATED_TOGETHER):
            located = store.locate(sha256[start:start + _LOCATED_TOGETHER])
            stop = start + len(located)
            self.shard[start:stop] = [number.setdefault(shard, len(number))
                                      for shard, _ in located]
            self.row[start:stop] = [row for _, row in located]
        # then renumbered in name order (write order for numbered shards): sorting by
        # (shard, row) is then the order rows lie in the store
        self._names = sorted(number)
        renumber = np.empty(len(number), np.int32)
        renumber[[number[name] for name in self._names]] = np.arange(len(number))
        self.shard = renumber[self.shard] if len(number) else self.shard
        self._shards = [(self.path / name, layout) for name, layout in
                        zip(self._names, self._checked_layouts(sha256))]
        self._storage_order: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.row)

    def _checked_layouts(self, sha256: list[str]) -> list[ShardLayout]:
        """Each shard's layout, after checking that every located row holds its image."""
        layouts = []
        for number, positions in _groups(self.shard):
            path = self.path / self._names[number]
            try:
                layout, held = read_shard_layout(path)
            except (OSError, KeyError) as exc:
                raise CacheError(f"{path}: cannot read it ({exc}); run `pipeline cache "
                                 f"verify`") from None
            rows = self.row[positions]
            if rows.max(initial=-1) >= layout.rows or np.any(held[rows] != np.array(
                    [sha256[i] for i in positions], dtype="S64")):
                raise CacheError(f"{path}: holds other images than the index says; run "
                                 f"`pipeline cache reindex`, then `pipeline cache verify`")
            layouts.append(layout)
        return layouts

    def storage_order(self) -> np.ndarray:
        """Positions (of the list given) in the order their rows lie in the store, (N,)
        int64: reads of neighbours in this order are runs of neighbouring rows."""
        if self._storage_order is None:
            self._storage_order = np.lexsort((self.row, self.shard))
        return self._storage_order

    def read(self, positions: np.ndarray | Sequence[int]) -> np.ndarray:
        """Features of the images at ``positions`` (of the list given; any order, repeats
        allowed), in that order, as (n, h, w, c) float32 (float16 rows widened, exactly)."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"positions of a list of {len(self)} images: "
                             f"{int(positions.min())} to {int(positions.max())}")
        # every (shard, row) wanted, once, in the order rows lie in the store
        wanted, back = np.unique(self.shard[positions].astype(np.int64) << 32
                                 | self.row[positions], return_inverse=True)
        shard, row = wanted >> 32, wanted & 0xFFFFFFFF
        try:
            read = read_rows_at(self._shards, shard, row)
        except FileNotFoundError as exc:
            raise CacheError(f"{exc.filename} was removed while its rows were being read "
                             f"(`pipeline cache gc`?); run the command again") from None
        return read[back.reshape(-1)].reshape(-1, *self.feature_shape)


def _groups(labels: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(label, the positions of ``labels`` that hold it, ascending) for each label present,
    smallest first."""
    order = np.argsort(labels, kind="stable")
    ordered = labels[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(order) else []
    for begin, end in zip(starts, [*starts[1:], len(order)]):
        yield int(ordered[begin]), order[begin:end]


class _IndexedState:
    """A store as the entry index sees it, plus the complete shards the journal does not list
    yet (left by a crash), read from their files as :meth:`FeatureStore._state` does."""

    def __init__(self, index: EntryIndex, unlisted: dict[str, tuple[str, int]],
                 unlisted_shards: list[str]):
        self.index = index
        self.unlisted = unlisted
        self.unlisted_shards = unlisted_shards

    @classmethod
    def of(cls, store: FeatureStore) -> _IndexedState | None:
        """The indexed state of ``store``, or None where the index cannot answer exactly."""
        if not store.path.is_dir() or read_damaged(store.path):
            return None
        index = open_index(store.path)
        if index is None:
            return None
        on_disk = {p.name for p in list_shard_files(store.path)}
        try:
            indexed = index.shard_names()
        except sqlite3.Error:
            index.close()
            return None
        if any(name not in on_disk for name in indexed):
            index.close()
            return None
        listed = set(indexed)
        unlisted: dict[str, tuple[str, int]] = {}
        names = sorted(on_disk - listed)
        for name in names:
            try:
                fingerprint, shas = read_shard_fingerprint_and_sha256(store.path / name)
            except (OSError, KeyError):
                continue
            if fingerprint == store.fingerprint:
                for row, sha in enumerate(shas):
                    unlisted.setdefault(sha, (name, row))
        return cls(index, unlisted, names)

    def unlisted_only(self) -> list[str]:
        """Entries of unlisted shards that no indexed shard holds."""
        if not self.unlisted:
            return []
        held = self.index.locate(self.unlisted)
        return [sha for sha in self.unlisted if sha not in held]


def read_located(folder: Path, located: Sequence[tuple[str, int]],
                 shape: tuple[int, ...], expect: Sequence[str] | None = None) -> np.ndarray:
    """Rows at ``located`` [(shard name, row), ...] under ``folder``, as (N, *shape) float32
    (a float16 shard's rows widened). With ``expect``, the sha256 each row must hold: a row
    holding another image raises :class:`CacheError` (the shard's own sha256 column is the
    last word, whatever an index said)."""
    out = np.empty((len(located), *shape), dtype=np.float32)
    by_shard: dict[str, tuple[list[int], list[int]]] = {}
    for i, (shard, row) in enumerate(located):
        positions, rows = by_shard.setdefault(shard, ([], []))
        positions.append(i)
        rows.append(row)
    for shard, (positions, rows) in by_shard.items():
        wanted = None if expect is None else [expect[i] for i in positions]
        out[positions] = read_shard_rows(folder / shard, np.asarray(rows), wanted)
    return out


def list_stores(cache_dir: str | os.PathLike) -> list[FeatureStore]:
    """Every fingerprint store under ``cache_dir`` (those with a ``fingerprint.json``), by name."""
    root = Path(cache_dir)
    if not root.is_dir():
        return []
    return [FeatureStore(root, p.name) for p in sorted(root.iterdir())
            if p.is_dir() and (p / DESCRIPTION_NAME).is_file()]
