"""ShardWriter: the one process allowed to add shards to a FeatureStore, and its recovery.

It holds the store's OS-level write lock (released by the kernel when the holder dies, even by
SIGKILL), brings the folder back to a clean state left by any earlier crash (temporary files
removed, damaged manifest lines dropped, complete shards the manifest missed adopted), then
buffers feature rows and commits them as immutable shards.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import filelock
import h5py
import numpy as np

from .manifest import (
    DAMAGED_NAME,
    MANIFEST_NAME,
    DamagedEntry,
    Manifest,
    append_shard,
    load_manifest,
    read_damaged,
    rewrite_manifest,
)
from .shards import TEMP_SUFFIX, WrittenShard, new_shard_name, row_checksums, write_shard
from .store import (
    DESCRIPTION_NAME,
    HOLDER_NAME,
    LOCK_NAME,
    REJECTS_NAME,
    CacheError,
    CacheLockedError,
    CacheLockWaitWarning,
    CacheWriteError,
    FeatureStore,
    _write_json_atomic,
)


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
        self.repaired_shards = 0
        self._bytes_written = 0
        self._buffer_sha: list[str] = []
        self._buffer_rows: list[np.ndarray] = []
        self._last_commit = time.monotonic()
        store.path.mkdir(parents=True, exist_ok=True)
        self._lock = filelock.FileLock(str(store.path / LOCK_NAME))
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            if lock_timeout == 0:
                raise CacheLockedError(self._locked_message(lock_timeout)) from None
            patience = "until it finishes" if lock_timeout < 0 else f"up to {lock_timeout:g} s"
            warnings.warn(f"cache {store.path} is being written by {self._holder()}; waiting "
                          f"{patience} (cache.lock_timeout)", CacheLockWaitWarning, stacklevel=3)
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

    def _holder(self) -> str:
        try:
            holder = json.loads((self.store.path / HOLDER_NAME).read_text())
            return f"pid {holder['pid']} on {holder['host']} since {holder['since']}"
        except (OSError, ValueError, KeyError):
            return "another process"

    def _locked_message(self, lock_timeout: float) -> str:
        waited = f" (waited {lock_timeout:g} s)" if lock_timeout > 0 else ""
        return (f"cache {self.store.path} is being written by {self._holder()}{waited}; wait "
                f"for it to "
                f"finish, or set cache.lock_timeout (seconds, -1 = wait forever) to wait for it")

    def _write_holder(self) -> None:
        _write_json_atomic(self.store.path / HOLDER_NAME, {
            "pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds")})

    def remove_temporary_files(self) -> int:
        """Delete shard writes that never got their final name (a crash, or a worker of a
        distributed extraction that died); only the lock holder may, as no writer is then
        left to finish them. Returns how many were removed."""
        removed = 0
        for temp in self.store.path.glob(f".*{TEMP_SUFFIX}"):
            temp.unlink(missing_ok=True)
            removed += 1
        return removed

    def _recover(self, description: dict) -> None:
        """Bring the folder to a clean state left by any earlier crash (we hold the lock)."""
        path = self.store.path
        info = path / DESCRIPTION_NAME
        if not info.exists():
            _write_json_atomic(info, description)
        self.remove_temporary_files()
        manifest = load_manifest(path)
        # A listed shard whose file is gone (a rewrite that crashed after removing the old
        # file, or a file deleted by hand): its entries become missing and are recomputed.
        gone = [name for name in manifest.shards if not (path / name).exists()]
        for name in gone:
            manifest.remove(name)
        if manifest.damaged_lines or gone:
            rewrite_manifest(path, manifest)
        copies: dict[str, set[int]] = {}
        for shard in self.store._shard_files():
            if shard.name in manifest.shards:
                continue
            rows = self._adopt(manifest, shard)
            if rows:
                copies[shard.name] = rows
        self._manifest = manifest
        self.store._manifest = manifest
        self.store._unlisted = []
        self._sequence = len(manifest.shards)
        for name, rows in copies.items():  # rows another shard already holds go
            self._drop_rows(name, rows, keep_file_as=None)
        damaged = read_damaged(path)
        if damaged:
            self._repair(damaged)

    def _repair(self, damaged: list[DamagedEntry]) -> None:
        """Rewrite each shard that verify found damaged without its damaged rows; the damaged
        file is moved aside (``.<name>.damaged``) and its entries become missing."""
        by_shard: dict[str, set[int]] = {}
        for entry in damaged:
            by_shard.setdefault(entry.shard, set()).add(entry.row)
        for name, rows in by_shard.items():
            if name in self._manifest.shards:
                self._drop_rows(name, rows, keep_file_as=".damaged")
        (self.store.path / DAMAGED_NAME).unlink(missing_ok=True)
        self.repaired_shards += len(by_shard)

    def remove_entries(self, sha256: Iterable[str]) -> int:
        """Remove the entries ``sha256`` from the store (garbage collection); returns the bytes
        of shard files deleted or shrunk. Shards left with no entry are deleted; the others
        are rewritten with the rows they keep."""
        drop = set(sha256)
        freed = 0
        for name, record in list(self._manifest.shards.items()):
            rows = {i for i, sha in enumerate(record.sha256) if sha in drop}
            if rows:
                freed += self._drop_rows(name, rows, keep_file_as=None)
        return freed

    def _drop_rows(self, name: str, rows: set[int], keep_file_as: str | None) -> int:
        """Replace shard ``name`` by a new shard of its other rows; returns bytes freed.

        Kept rows are checked against their write-time checksums first; one that fails is
        dropped too (its entry becomes missing and is recomputed), never copied with a fresh
        checksum. Order matters for crashes: the kept rows are committed to a new shard, then
        the old file goes (aside as ``.<name><keep_file_as>``, or deleted), then the manifest is
        rewritten. A crash between steps leaves every kept row readable, and the next writer's
        recovery drops the record of a shard whose file is gone.
        """
        record = self._manifest.shards[name]
        path = self.store.path / name
        keep = [i for i in range(record.rows) if i not in rows] if path.exists() else []
        kept_rows = np.empty((0,))
        if keep:
            try:
                with h5py.File(path, "r") as f:
                    kept_rows = f["features"][np.asarray(keep)]
            except (OSError, KeyError, ValueError) as exc:
                if keep_file_as is None:  # gc: leave a shard it cannot read as it is
                    raise CacheError(f"{path}: cannot read to rewrite it ({exc}); run "
                                     f"`pipeline cache verify`") from None
                keep = []  # repair: the file goes aside, every row is recomputed
            if keep and record.checksums:
                good = [j for j, crc in enumerate(row_checksums(kept_rows))
                        if crc == record.checksums[keep[j]]]
                keep, kept_rows = [keep[j] for j in good], kept_rows[good]
        before = path.stat().st_size if path.exists() else 0
        written_before = self._bytes_written
        self._manifest.remove(name)
        if keep:
            self.add([record.sha256[i] for i in keep], kept_rows)
            self.flush()
        if path.exists():
            if keep_file_as:
                path.rename(path.with_name(f".{name}{keep_file_as}"))
            else:
                path.unlink()
        rewrite_manifest(self.store.path, self._manifest)
        self.store.refresh()
        self.store._manifest = self._manifest
        return before - (self._bytes_written - written_before)

    def _adopt(self, manifest: Manifest, shard: Path) -> set[int]:
        """List a complete shard that a crash kept out of the manifest; returns the rows whose
        images another listed shard already holds (to be dropped once the manifest is set).
        A shard whose every row is such a copy is deleted instead: it holds nothing new."""
        try:
            with h5py.File(shard, "r") as f:
                foreign = f.attrs.get("fingerprint") != self.store.fingerprint
                features = f["features"][:]
                shas = [s.decode("ascii") for s in f["sha256"][:]]
        except (OSError, KeyError):
            # Unreadable under a final name should not happen (rename is atomic); move it
            # aside rather than delete it, so nothing is destroyed without a person looking.
            shard.rename(shard.with_name(f".{shard.name}.unreadable"))
            return set()
        if foreign or len(shas) != len(features):
            # A shard of another fingerprint (copied in by hand) would serve wrong features.
            shard.rename(shard.with_name(f".{shard.name}.foreign"))
            return set()
        copies = _rows_held_elsewhere(shas, manifest, shard.name)
        if len(copies) == len(shas):
            shard.unlink()
            return set()
        written = WrittenShard(name=shard.name, sha256=shas, checksums=row_checksums(features),
                               bytes=shard.stat().st_size)
        append_shard(self.store.path, manifest, written)
        self.adopted_shards += 1
        return copies

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
        except BaseException as exc:
            # Whatever stopped the write (disk full, Ctrl-C), the shard either has its final
            # name, and then its rows are durable and the next writer adopts it, or it does
            # not exist: only then do the rows go back into the buffer for a later commit.
            if not (self.store.path / name).exists():
                self._buffer_sha[:0] = shas
                self._buffer_rows[:0] = rows
            if isinstance(exc, OSError):
                raise CacheWriteError(self._write_failed(name, exc)) from exc
            raise
        self._last_commit = time.monotonic()
        self._record(written)

    def commit_written(self, written: WrittenShard) -> None:
        """Record in the manifest a complete shard that another process wrote into this
        store's folder under its final name (a worker of a distributed extraction): workers
        write shards, only the lock holder writes the manifest."""
        path = self.store.path / written.name
        if not path.is_file():
            raise CacheError(f"{path}: a worker reported this shard, but it is not there (is "
                             f"the cache folder on a filesystem every worker and this machine "
                             f"share?)")
        if written.name in self._manifest.shards:  # recorded already (the same file)
            return
        copies = _rows_held_elsewhere(written.sha256, self._manifest, written.name)
        if len(copies) == len(written.sha256):  # a partition that ran twice: nothing new
            path.unlink()
            return
        self._record(written)
        if copies:
            self._drop_rows(written.name, copies, keep_file_as=None)

    def _record(self, written: WrittenShard) -> None:
        try:
            append_shard(self.store.path, self._manifest, written)
        except OSError as exc:
            raise CacheWriteError(self._write_failed(MANIFEST_NAME, exc)) from exc
        self.rows_written += len(written.sha256)
        self.shards_written += 1
        self._bytes_written += written.bytes

    def _write_failed(self, name: str, exc: OSError) -> str:
        return (f"cannot write {name} in cache {self.store.path}: "
                f"{exc.strerror or exc}; every shard committed before it is kept, and the "
                f"next run goes on from there")

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


def _rows_held_elsewhere(sha256: Sequence[str], manifest: Manifest, name: str) -> set[int]:
    """Rows of shard ``name`` whose image another shard in ``manifest`` already holds:
    copies, never to be listed."""
    return {row for row, sha in enumerate(sha256)
            if sha in manifest.entries and manifest.entries[sha][0] != name}
