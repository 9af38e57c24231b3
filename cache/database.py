"""The cache folder's SQLite database, ``<cache dir>/index.sqlite``: one connection recipe for
what it holds (the hash state, :mod:`cache.hashstate`; the entry index, :mod:`cache.index`).

Everything in it is derived (from files' bytes, or from the stores' manifests) and can be
derived again, so a database that cannot be read is set aside as ``index.sqlite.unreadable-*``
with a :class:`~cache.errors.CacheDatabaseWarning` and started afresh: that costs time, never
features. Several processes use it at once: WAL mode, and a busy timeout for writers.
"""

from __future__ import annotations

import sqlite3
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import CacheDatabaseWarning

INDEX_NAME = "index.sqlite"
BATCH = 900  # values per query, under SQLite's default limit of bound parameters
_BUSY_TIMEOUT_S = 60.0
_DAMAGED = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)  # what makes a file worth setting aside


def open_database(cache_dir: Path, schema: str) -> sqlite3.Connection:
    """A connection to ``cache_dir/index.sqlite`` (made when needed) with ``schema`` (``CREATE
    ... IF NOT EXISTS`` statements) in place; a file that is not a database, or a damaged one,
    is set aside with a warning and replaced by an empty one. Other failures (a read-only
    folder, a lock held too long, a file system without the locks WAL needs) raise
    :class:`sqlite3.Error`: the callers then do without the database."""
    path = cache_dir / INDEX_NAME
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _connect(path, schema)
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", None) not in _DAMAGED:
            raise  # locked, read-only, no WAL on this file system: not the file's fault
        aside = path.with_name(f"{path.name}.unreadable-{time.time_ns()}")
        warnings.warn(f"{path}: cannot be read ({exc}); moved aside to {aside.name} and "
                      f"started afresh (what it remembered is worked out again)",
                      CacheDatabaseWarning, stacklevel=3)
        for suffix in ("", "-wal", "-shm"):
            source = path.with_name(path.name + suffix)
            if source.exists():
                source.rename(aside.with_name(aside.name + suffix))
        return _connect(path, schema)


def _connect(path: Path, schema: str) -> sqlite3.Connection:
    # callers serialise their use of a connection; it may be another thread than the maker
    db = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None,
                         check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        # a lost last transaction is worked out again, never wrong: no fsync per commit
        db.execute("PRAGMA synchronous=NORMAL")
        # No memory map (mmap_size): each store's connection mapped the whole file again, and
        # every page it touched counted in the process's RSS once per connection (at 10^5
        # images a dense head streamed from four stores peaked at 1,639 MiB, without 966 MiB);
        # pages read through read() come from the OS's page cache, as fast here.
        db.executescript(schema)
    except sqlite3.DatabaseError:
        db.close()
        raise
    return db


@contextmanager
def transaction(db: sqlite3.Connection, wait: bool = True) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception): one writer at a
    time, waiting up to the busy timeout for another process's; with ``wait=False``, not at
    all (``sqlite3.OperationalError`` at once: for writes that may be skipped)."""
    if wait:
        db.execute("BEGIN IMMEDIATE")
    else:
        db.execute("PRAGMA busy_timeout = 0")
        try:
            db.execute("BEGIN IMMEDIATE")
        finally:
            db.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def batches(items: Iterable, size: int = BATCH) -> Iterator[list]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
