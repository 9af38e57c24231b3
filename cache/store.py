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
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import filelock
import h5py
import numpy as np

from .manifest import Manifest, ShardRecord, append_shard, load_manifest, rewrite_manifest
from .shards import (
    SHARD_SUFFIX,
    TEMP_SUFFIX,
    WrittenShard,
    fsync_dir,
    new_shard_name,
    read_shard_rows,
    row_checksums,
    write_shard,
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


class ShardWriter:
    """Buffers feature rows and commits them as shards; holds the store's write lock.

    A shard is committed when ``shard_rows`` rows are buffered or ``flush_seconds`` have passed
    since the last commit, and on close, including close after an exception or Ctrl-C, so
    finished features are kept whatever stops the run. Rows already in the store are ignored.
    """

    def __init__(self, store: FeatureStore, description: dict, shard_rows: int,
                 flush_seconds: float, lock_timeout: float):
        if shard_rows < 1:
            raise ValueError("shard_rows must be at least 1")
        self.store = store
        self.shard_rows = shard_rows
        self.flush_seconds = flush_seconds
        self.rows_written = 0
        self.shards_written = 0
        self.adopted_shards = 0
        self._buffer_sha: list[str] = []
        self._buffer_rows: list[np.ndarray] = []
        self._last_commit = time.monotonic()
        store.path.mkdir(parents=True, exist_ok=True)
        self._lock = filelock.FileLock(str(store.path / LOCK_NAME))
        try:
            self._lock.acquire(timeout=lock_timeout)
        except filelock.Timeout:
            raise CacheLockedError(self._locked_message(lock_timeout)) from None
        try:
            self._write_holder()
            self._recover(description)
        except BaseException:
            self._lock.release()
            raise

    def _locked_message(self, lock_timeout: float) -> str:
        try:
            holder = json.loads((self.store.path / HOLDER_NAME).read_text())
            who = f"pid {holder['pid']} on {holder['host']} since {holder['since']}"
        except (OSError, ValueError, KeyError):
            who = "another process"
        waited = f" (waited {lock_timeout:g} s)" if lock_timeout > 0 else ""
        return (f"cache {self.store.path} is being written by {who}{waited}; wait for it to "
                f"finish, or set cache.lock_timeout (seconds, -1 = wait forever) to wait for it")

    def _write_holder(self) -> None:
        _write_json_atomic(self.store.path / HOLDER_NAME, {
            "pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds")})

    def _recover(self, description: dict) -> None:
        """Bring the folder to a clean state left by any earlier crash (we hold the lock)."""
        path = self.store.path
        info = path / DESCRIPTION_NAME
        if not info.exists():
            _write_json_atomic(info, description)
        for temp in path.glob(f".*{TEMP_SUFFIX}"):
            temp.unlink(missing_ok=True)  # a write that never got its final name
        manifest = load_manifest(path)
        if manifest.damaged_lines:
            rewrite_manifest(path, manifest)
        for shard in self.store._shard_files():
            if shard.name in manifest.shards:
                continue
            self._adopt(manifest, shard)
        self._manifest = manifest
        self.store._manifest = manifest
        self.store._unlisted = []
        self._sequence = len(manifest.shards)

    def _adopt(self, manifest: Manifest, shard: Path) -> None:
        """List a complete shard that a crash kept out of the manifest."""
        try:
            with h5py.File(shard, "r") as f:
                foreign = f.attrs.get("fingerprint") != self.store.fingerprint
                features = f["features"][:]
                shas = [s.decode("ascii") for s in f["sha256"][:]]
        except (OSError, KeyError):
            # Unreadable under a final name should not happen (rename is atomic); move it
            # aside rather than delete it, so nothing is destroyed without a person looking.
            shard.rename(shard.with_name(f".{shard.name}.unreadable"))
            return
        if foreign or len(shas) != len(features):
            # A shard of another fingerprint (copied in by hand) would serve wrong features.
            shard.rename(shard.with_name(f".{shard.name}.foreign"))
            return
        written = WrittenShard(name=shard.name, sha256=shas, checksums=row_checksums(features),
                               bytes=shard.stat().st_size)
        append_shard(self.store.path, manifest, written)
        self.adopted_shards += 1

    def add(self, sha256: Sequence[str], features: np.ndarray) -> None:
        """Buffer rows (N, h, w, c) float32 for ``sha256``; commit a shard when one is due."""
        if len(sha256) != len(features):
            raise ValueError(f"{len(sha256)} sha256 for {len(features)} feature rows")
        known = self._manifest.entries
        pending = set(self._buffer_sha)
        for sha, row in zip(sha256, features):
            if sha in known or sha in pending:
                continue
            pending.add(sha)
            self._buffer_sha.append(sha)
            self._buffer_rows.append(np.asarray(row, dtype=np.float32))
        while len(self._buffer_sha) >= self.shard_rows:
            self._commit(self.shard_rows)
        if self._buffer_sha and time.monotonic() - self._last_commit >= self.flush_seconds:
            self.flush()

    def reject(self, sha256: str, reason: str, context: str) -> None:
        """Remember that ``sha256`` cannot be extracted under ``context`` (see ``rejected``)."""
        line = json.dumps({"sha256": sha256, "reason": reason, "context": context})
        with open(self.store.path / REJECTS_NAME, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def flush(self) -> None:
        """Commit every buffered row now."""
        while self._buffer_sha:
            self._commit(min(len(self._buffer_sha), self.shard_rows))

    def _commit(self, count: int) -> None:
        shas = self._buffer_sha[:count]
        rows = self._buffer_rows[:count]
        del self._buffer_sha[:count]
        del self._buffer_rows[:count]
        self._sequence += 1
        name = new_shard_name(self._sequence)
        try:
            written = write_shard(self.store.path, name, self.store.fingerprint, shas,
                                  np.stack(rows))
        except BaseException:
            # Whatever stopped the write (disk full, Ctrl-C), the shard either has its final
            # name, and then its rows are durable and the next writer adopts it, or it does
            # not exist: only then do the rows go back into the buffer for a later commit.
            if not (self.store.path / name).exists():
                self._buffer_sha[:0] = shas
                self._buffer_rows[:0] = rows
            raise
        self.rows_written += count
        self.shards_written += 1
        self._last_commit = time.monotonic()
        append_shard(self.store.path, self._manifest, written)

    @property
    def buffered(self) -> int:
        """Rows waiting for the next commit."""
        return len(self._buffer_sha)

    def close(self) -> None:
        """Commit what is buffered and release the lock."""
        try:
            self.flush()
        finally:
            (self.store.path / HOLDER_NAME).unlink(missing_ok=True)
            self._lock.release()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # Keep finished rows even when the run is failing; if the commit itself fails (disk
        # full), the original error is the one to report, and the cache is as before the commit.
        try:
            self.close()
        except Exception:
            pass


def list_stores(cache_dir: str | os.PathLike) -> list[FeatureStore]:
    """Every fingerprint store under ``cache_dir`` (those with a ``fingerprint.json``), by name."""
    root = Path(cache_dir)
    if not root.is_dir():
        return []
    return [FeatureStore(root, p.name) for p in sorted(root.iterdir())
            if p.is_dir() and (p / DESCRIPTION_NAME).is_file()]
