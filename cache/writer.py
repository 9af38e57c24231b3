"""Adding features to a FeatureStore: :func:`open_writer` and the :class:`ShardWriter` it returns.

:func:`open_writer` composes the three jobs of writing: it takes the store's write lock
(:mod:`cache.lock`), brings the folder back to a clean state left by any earlier crash
(:mod:`cache.recovery`), and hands back a :class:`ShardWriter`, which buffers feature rows and
commits them as immutable shards (:mod:`cache.shard`) recorded in the manifest journal
(:mod:`cache.manifest`). Closing the writer commits what is buffered and releases the lock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence

import numpy as np

from .errors import CacheError, CacheWriteError
from .index import open_index
from .lock import WriteLock
from .manifest import DAMAGED_NAME, MANIFEST_NAME, Manifest, append_shard, rewrite_manifest
from .reader import REJECTS_NAME, FeatureStore
from .recovery import recover, remove_temporary_files, rows_held_elsewhere
from .shard import (
    WrittenShard,
    checked_storage_dtype,
    new_shard_name,
    read_shard_rows,
    row_checksums,
    write_shard,
)


def open_writer(store: FeatureStore, description: dict, shard_rows: int = 512,
                flush_seconds: float = 60.0, lock_timeout: float = 0.0) -> ShardWriter:
    """Take ``store``'s write lock, recover its folder, and return a :class:`ShardWriter`
    (use it as a context manager, or call :meth:`ShardWriter.close`).

    ``description`` (what the fingerprint is made of) is written as ``fingerprint.json`` by the
    first writer; its ``storage`` key, when present, is the dtype new shards store
    (:data:`~cache.shard.STORAGE_DTYPES`; float32 without it), so a store keeps one storage
    dtype for its life (rewrites by gc or repair included: they pass the stored description).
    ``lock_timeout`` is how many seconds to wait for another writer (0: refuse at
    once, negative: wait forever); :class:`~cache.errors.CacheLockedError` names the holder.
    """
    if shard_rows < 1:
        raise ValueError("shard_rows must be at least 1")
    dtype = checked_storage_dtype(description.get("storage", "float32"))  # before any write
    lock = WriteLock(store.path, lock_timeout)
    try:
        recovered = recover(store.path, store.fingerprint, description)
        writer = ShardWriter(store, recovered.manifest, lock, shard_rows, flush_seconds, dtype)
        writer.adopted_shards = recovered.adopted_shards
        for name, rows in recovered.copies.items():  # rows another shard already holds go
            writer.rewrite_without(name, rows)
        for name, rows in recovered.damaged.items():
            if name in writer.manifest.shards:
                # the damaged file goes aside for a person to look at; its entries are missing
                writer.rewrite_without(name, rows, keep_file_as=".damaged")
                writer.repaired_shards += 1
        if recovered.damaged_recorded:
            (store.path / DAMAGED_NAME).unlink(missing_ok=True)
    except BaseException:
        lock.release()
        raise
    store.refresh()
    return writer


class ShardWriter:
    """Buffers feature rows and commits them as shards of the store whose lock it holds.

    A shard is committed when ``shard_rows`` rows are buffered or ``flush_seconds`` have passed
    since the last commit, and on close, including close after an exception or Ctrl-C, so
    finished features are kept whatever stops the run. Rows already in the store are ignored.
    Made by :func:`open_writer`.
    """

    def __init__(self, store: FeatureStore, manifest: Manifest, lock: WriteLock,
                 shard_rows: int, flush_seconds: float, dtype: str = "float32"):
        self.store = store
        self.dtype = dtype
        self.manifest = manifest
        self.shard_rows = shard_rows
        self.flush_seconds = flush_seconds
        self.rows_written = 0
        self.shards_written = 0
        self.adopted_shards = 0
        self.repaired_shards = 0
        self._lock = lock
        self._bytes_written = 0
        self._buffer_sha: list[str] = []
        self._buffer_rows: list[np.ndarray] = []
        self._last_commit = time.monotonic()
        self._sequence = len(manifest.shards)

    # -- adding rows -----------------------------------------------------------------------

    def add(self, sha256: Sequence[str], features: np.ndarray) -> None:
        """Buffer rows (N, h, w, c) float32 for ``sha256``; commit a shard when one is due."""
        if len(sha256) != len(features):
            raise ValueError(f"{len(sha256)} sha256 for {len(features)} feature rows")
        known = self.manifest.entries
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
        """Remember that ``sha256`` cannot be extracted under ``context``
        (:meth:`FeatureStore.rejected` reads it back)."""
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
                                  np.stack(rows), self.dtype)
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
        if written.name in self.manifest.shards:  # recorded already (the same file)
            return
        copies = rows_held_elsewhere(written.sha256, self.manifest, written.name)
        if len(copies) == len(written.sha256):  # a partition that ran twice: nothing new
            path.unlink()
            return
        self._record(written)
        if copies:
            self.rewrite_without(written.name, copies)

    def remove_temporary_files(self) -> int:
        """Delete shard writes that never got their final name (a worker of a distributed
        extraction that died); returns how many were removed."""
        return remove_temporary_files(self.store.path)

    def _record(self, written: WrittenShard) -> None:
        try:
            append_shard(self.store.path, self.manifest, written)
        except OSError as exc:
            raise CacheWriteError(self._write_failed(MANIFEST_NAME, exc)) from exc
        self.rows_written += len(written.sha256)
        self.shards_written += 1
        self._bytes_written += written.bytes
        self.store.refresh()

    def _write_failed(self, name: str, exc: OSError) -> str:
        return (f"cannot write {name} in cache {self.store.path}: "
                f"{exc.strerror or exc}; every shard committed before it is kept, and the "
                f"next run goes on from there")

    # -- removing rows ---------------------------------------------------------------------

    def remove_entries(self, sha256: Iterable[str]) -> int:
        """Remove the entries ``sha256`` from the store (garbage collection); returns the bytes
        of shard files deleted or shrunk. Shards left with no entry are deleted; the rows the
        others keep are written into new shards together, and the manifest is rewritten once,
        so the work grows with the entries, not with entries times shards."""
        drop = set(sha256)
        plans = [(name, {i for i, sha in enumerate(record.sha256) if sha in drop})
                 for name, record in self.manifest.shards.items()]
        return self._rewrite([(name, rows) for name, rows in plans if rows])

    def rewrite_without(self, name: str, rows: set[int], keep_file_as: str | None = None) -> int:
        """Replace shard ``name`` by a new shard of its rows not in ``rows``; returns the bytes
        freed. The old file is deleted, or moved aside as ``.<name><keep_file_as>``."""
        return self._rewrite([(name, rows)], keep_file_as)

    def _rewrite(self, plans: list[tuple[str, set[int]]], keep_file_as: str | None = None
                 ) -> int:
        """Replace each shard of ``plans`` (name, rows to drop) by the rows it keeps; returns
        the bytes freed.

        Kept rows are checked against their write-time checksums first; one that fails is
        dropped too (its entry becomes missing and is recomputed), never copied with a fresh
        checksum. A shard that cannot be read stays as it is and raises :class:`CacheError`
        (nothing is destroyed unread), unless it is being moved aside (``keep_file_as``,
        a repair): then every row is recomputed. Order matters for crashes: the kept rows are
        committed to new shards, then the old files go, then the manifest is rewritten. A
        crash between steps leaves every kept row readable (the old shard's record, listed
        first, wins while its file exists), and the next writer's recovery drops the record of
        a shard whose file is gone.
        """
        before = 0
        written_before = self._bytes_written
        for name, rows in plans:
            # out of the in-memory manifest first, so that the writer takes the kept rows as
            # new (the journal on disk keeps listing the shard until it is rewritten below)
            record = self.manifest.detach(name)
            path = self.store.path / name
            keep = [i for i in range(record.rows) if i not in rows] if path.exists() else []
            kept_rows = np.empty((0,))
            if keep:
                try:
                    kept_rows = read_shard_rows(path, np.asarray(keep))
                except (OSError, KeyError, ValueError) as exc:
                    if keep_file_as is None:
                        raise CacheError(f"{path}: cannot read to rewrite it ({exc}); run "
                                         f"`pipeline cache verify`") from None
                    keep = []  # every row is recomputed
                if keep and record.checksums:
                    good = [j for j, crc in enumerate(row_checksums(kept_rows))
                            if crc == record.checksums[keep[j]]]
                    keep, kept_rows = [keep[j] for j in good], kept_rows[good]
            before += path.stat().st_size if path.exists() else 0
            if keep:
                self.add([record.sha256[i] for i in keep], kept_rows)
        self.flush()
        for name, _ in plans:
            path = self.store.path / name
            if path.exists():
                if keep_file_as:
                    path.rename(path.with_name(f".{name}{keep_file_as}"))
                else:
                    path.unlink()
        self.manifest.rebuild_entries()  # an entry a removed shard shared maps to its copy
        rewrite_manifest(self.store.path, self.manifest)
        self.store.refresh()
        return before - (self._bytes_written - written_before)

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Commit what is buffered, bring the entry index up to date with what was committed
        (so that the next command's first question does not pay for it) and release the
        lock."""
        try:
            self.flush()
            index = open_index(self.store.path)   # None where it cannot be written: fine
            if index is not None:
                index.close()
        finally:
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
