"""FeatureStore: the features of one backbone fingerprint, content-addressed by image sha256.

On disk, under ``<cache dir>/<fingerprint>/``::

    fingerprint.json        what the fingerprint is made of (weights hash, input size, ...)
    manifest.jsonl          the journal of committed shards (see cache.manifest)
    shard-*.h5              immutable HDF5 shards (see cache.shards)
    views/<id>.json         dataset views that reference these entries (written by the pipeline)
    .write.lock             held by the one process allowed to add shards

Readers take no lock: a shard is immutable once it has its final name, and a torn manifest
line is ignored. Writers hold ``.write.lock`` (an OS-level lock, released by the kernel when the
holder dies, even by SIGKILL).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

if TYPE_CHECKING:
    from .writer import ShardWriter

from .manifest import Manifest, ShardRecord, load_manifest, read_damaged
from .shards import (
    SHARD_SUFFIX,
    TEMP_SUFFIX,
    fsync_dir,
    read_shard_rows,
)

DESCRIPTION_NAME = "fingerprint.json"
LOCK_NAME = ".write.lock"
HOLDER_NAME = ".write.holder"
REJECTS_NAME = "rejects.jsonl"
VIEWS_DIR = "views"


class CacheError(Exception):
    """A cache operation cannot proceed; the message says why and what to do."""


class CacheLockedError(CacheError):
    """Another process holds the write lock of this fingerprint's cache."""


class CacheWriteError(CacheError):
    """A shard or manifest write failed (disk full, no permission); what was committed before
    it is intact."""


class CacheLockWaitWarning(UserWarning):
    """Another process holds the write lock, and this one waits for it (cache.lock_timeout)."""


class MissingFeaturesError(CacheError, KeyError):
    """Features were asked for images that are not in the cache."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class StoreStats:
    """Counts and sizes of one fingerprint's cache."""

    fingerprint: str
    entries: int
    shards: int
    bytes: int
    views: int
    unlisted_shards: int  # complete shards the manifest does not list yet (after a crash)


def _write_json_atomic(path: Path, payload: dict) -> None:
    temp = path.with_name(f".{path.name}{TEMP_SUFFIX}")
    with open(temp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temp, path)
    fsync_dir(path.parent)


class FeatureStore:
    """Read and append the cached features of one backbone fingerprint.

    ``FeatureStore(cache_dir, fingerprint)`` opens (lazily) ``cache_dir/fingerprint``; nothing is
    created until a writer commits its first shard.
    """

    def __init__(self, cache_dir: str | os.PathLike, fingerprint: str):
        if not fingerprint or "/" in fingerprint or fingerprint.startswith("."):
            raise ValueError(f"not a fingerprint id: {fingerprint!r}")
        self.cache_dir = Path(cache_dir)
        self.fingerprint = fingerprint
        self.path = self.cache_dir / fingerprint
        self._manifest: Manifest | None = None
        self._unlisted: list[str] = []

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.cache_dir)!r}, {self.fingerprint!r})"

    # -- reading ---------------------------------------------------------------------------

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

    def _state(self) -> Manifest:
        if self._manifest is None:
            manifest = load_manifest(self.path)
            # A shard renamed into place just before a crash is complete but not yet in the
            # manifest: read its sha256 column so its features count as cached.
            self._unlisted = [p.name for p in self._shard_files() if p.name not in manifest.shards]
            for name in self._unlisted:
                try:
                    with h5py.File(self.path / name, "r") as f:
                        if f.attrs.get("fingerprint") != self.fingerprint:
                            continue  # not ours; the next writer moves it aside
                        shas = [s.decode("ascii") for s in f["sha256"][:]]
                except (OSError, KeyError):
                    continue
                manifest.add(ShardRecord(name=name, sha256=tuple(shas), checksums=(), bytes=0))
            for name in [n for n in manifest.shards if not (self.path / n).exists()]:
                manifest.remove(name)  # a shard file gone: its entries are missing, not broken
            manifest.forget_damaged(read_damaged(self.path))  # extract computes them again
            self._manifest = manifest
        return self._manifest

    def _shard_files(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir()
                      if p.name.endswith(SHARD_SUFFIX) and not p.name.startswith("."))

    def __len__(self) -> int:
        return len(self._state().entries)

    def __contains__(self, sha256: object) -> bool:
        return sha256 in self._state().entries

    def shards(self) -> list[ShardRecord]:
        """Committed shards in commit order (plus complete shards found but not yet listed)."""
        return list(self._state().shards.values())

    def sha256s(self) -> list[str]:
        """Every cached image sha256, in storage order."""
        return list(self._state().entries)

    def missing(self, sha256: Iterable[str]) -> list[str]:
        """The sha256 of ``sha256`` that have no features here, unique, in first-seen order."""
        entries = self._state().entries
        return list(dict.fromkeys(s for s in sha256 if s not in entries))

    def locate(self, sha256: Sequence[str]) -> list[tuple[str, int]]:
        """(shard name, row) of each sha256; :class:`MissingFeaturesError` names absent ones."""
        entries = self._state().entries
        absent = [s for s in sha256 if s not in entries]
        if absent:
            raise MissingFeaturesError(
                f"{len(absent)} image(s) have no features in {self.path} "
                f"(first: {', '.join(absent[:3])}); run `pipeline run extract` first")
        return [entries[s] for s in sha256]

    def get(self, sha256: Sequence[str]) -> np.ndarray:
        """Features of ``sha256`` in the order given, as (N, h, w, c) float32 in memory."""
        return read_located(self.path, self.locate(list(sha256)), self.feature_shape)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one entry, e.g. (4, 4, 512) for VGG16 at 150x150."""
        shape = self.description.get("output_shape")
        if shape:
            return tuple(int(d) for d in shape)
        shards = self._shard_files()
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
            block = dask.delayed(read_located, pure=True)(self.path, chunk, shape)
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
        state = self._state()
        files = self._shard_files()
        views = list(self.views_dir().glob("*.json")) if self.views_dir().is_dir() else []
        return StoreStats(fingerprint=self.fingerprint, entries=len(state.entries),
                          shards=len(files), bytes=sum(p.stat().st_size for p in files),
                          views=len(views), unlisted_shards=len(self._unlisted))

    # -- writing ---------------------------------------------------------------------------

    def open_writer(self, description: dict, shard_rows: int = 512,
                    flush_seconds: float = 60.0, lock_timeout: float = 0.0) -> ShardWriter:
        """Take the write lock and return a :class:`ShardWriter` (use it as a context manager).

        ``lock_timeout`` is how many seconds to wait for another writer (0: refuse at once,
        negative: wait forever). Raises :class:`CacheLockedError` naming the holder.
        """
        from .writer import ShardWriter  # the writer module builds on this one
        return ShardWriter(self, description, shard_rows, flush_seconds, lock_timeout)


def read_located(folder: Path, located: Sequence[tuple[str, int]],
                 shape: tuple[int, ...]) -> np.ndarray:
    """Rows at ``located`` [(shard name, row), ...] under ``folder``, as (N, *shape) float32."""
    out = np.empty((len(located), *shape), dtype=np.float32)
    by_shard: dict[str, tuple[list[int], list[int]]] = {}
    for i, (shard, row) in enumerate(located):
        positions, rows = by_shard.setdefault(shard, ([], []))
        positions.append(i)
        rows.append(row)
    for shard, (positions, rows) in by_shard.items():
        out[positions] = read_shard_rows(folder / shard, np.asarray(rows))
    return out


def list_stores(cache_dir: str | os.PathLike) -> list[FeatureStore]:
    """Every fingerprint store under ``cache_dir`` (those with a ``fingerprint.json``), by name."""
    root = Path(cache_dir)
    if not root.is_dir():
        return []
    return [FeatureStore(root, p.name) for p in sorted(root.iterdir())
            if p.is_dir() and (p / DESCRIPTION_NAME).is_file()]
