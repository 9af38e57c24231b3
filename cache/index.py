"""The entry index: which shard and row hold an image's features, without reading every entry.

Tables in the cache folder's ``index.sqlite`` (:mod:`cache.database`)::

    journals(fingerprint PRIMARY KEY, inode, ingested)   how much of manifest.jsonl is indexed
    shards(fingerprint, name, rows, position)            one per committed shard
    entries(fingerprint, sha256, shard, row)             one per cached image

The manifest journal (:mod:`cache.manifest`) stays the record of what is committed, written
as before, so every crash guarantee of the cache is the journal's; the index is derived from
it and kept up to date by whoever reads: :func:`synced` ingests the lines appended since it
last looked (``ingested`` bytes, complete lines only, so a line being written is left for
later), and indexes the whole journal again when it was replaced (a new inode: gc, repair and
recovery rewrite it) or cut back. Ingesting is one transaction, so a crash half-way leaves the
index where it was, and ingesting the same lines again changes nothing (the first shard that
lists an image wins, as in the journal). ``pipeline cache reindex`` drops a store's rows and
indexes its journal from the start.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import warnings
from collections.abc import Iterable
from pathlib import Path

from .database import batches, open_database, transaction
from .errors import CacheIndexedWarning
from .faults import fault_point
from .manifest import MANIFEST_NAME

#: A store with more entries than this, indexed for the first time, says so (a one-off read of
#: its whole journal, seconds at a million entries).
ANNOUNCE_ENTRIES = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journals (
    fingerprint TEXT PRIMARY KEY,
    inode INTEGER NOT NULL,
    ingested INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shards (
    fingerprint TEXT NOT NULL,
    name TEXT NOT NULL,
    rows INTEGER NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (fingerprint, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries (
    fingerprint TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    shard TEXT NOT NULL,
    row INTEGER NOT NULL,
    PRIMARY KEY (fingerprint, sha256)
) WITHOUT ROWID;
"""


class EntryIndex:
    """The index of one store (``folder``, whose name is its fingerprint) in the database of
    the cache folder above it; every query first brings it up to date with the journal."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.fingerprint = self.folder.name
        self._db = open_database(self.folder.parent, _SCHEMA)
        self._lock = threading.RLock()  # one query at a time on the connection

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> EntryIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- keeping up with the journal ------------------------------------------------------

    def sync(self) -> int:
        """Index what the journal holds and the index does not yet; returns the lines read."""
        with self._lock:
            return self._sync()

    def _sync(self) -> int:
        path = self.folder / MANIFEST_NAME
        try:
            info = path.stat()
        except FileNotFoundError:
            info = None
        row = self._db.execute("SELECT inode, ingested FROM journals WHERE fingerprint = ?",
                               (self.fingerprint,)).fetchone()
        inode, size = (info.st_ino, info.st_size) if info else (0, 0)
        if row is not None and row[0] == inode and row[1] == size:
            return 0  # nothing new: one stat and one lookup
        fresh = row is None or row[0] != inode or size < row[1]
        start = 0 if fresh else row[1]
        data = b""
        if info is not None:
            with open(path, "rb") as fh:
                fh.seek(start)
                data = fh.read(size - start)
        end = data.rfind(b"\n") + 1  # complete lines only: a line being written waits
        lines = data[:end].splitlines()
        indexed = 0
        with transaction(self._db):
            if fresh:
                for table in ("shards", "entries"):
                    self._db.execute(f"DELETE FROM {table} WHERE fingerprint = ?",
                                     (self.fingerprint,))
            position = self._db.execute(
                "SELECT COALESCE(MAX(position), -1) + 1 FROM shards WHERE fingerprint = ?",
                (self.fingerprint,)).fetchone()[0]
            for line in lines:
                record = _parse(line)
                if record is None:
                    continue  # a torn line: load_manifest skips it too
                name, shas = record
                added = self._db.execute(
                    "INSERT OR IGNORE INTO shards VALUES (?, ?, ?, ?)",
                    (self.fingerprint, name, len(shas), position)).rowcount
                if not added:
                    continue  # listed twice: the first record counts, as in the journal
                position += 1
                self._db.executemany(
                    "INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?)",
                    ((self.fingerprint, sha, name, i) for i, sha in enumerate(shas)))
                indexed += len(shas)
                fault_point("index.ingest")
            self._db.execute("INSERT OR REPLACE INTO journals VALUES (?, ?, ?)",
                             (self.fingerprint, inode, start + end))
        if row is None and indexed > ANNOUNCE_ENTRIES:
            warnings.warn(f"{self.folder}: indexed its {indexed:,} entries from manifest.jsonl "
                          f"into {self.folder.parent / 'index.sqlite'} (once: later commands "
                          f"read the index)", CacheIndexedWarning, stacklevel=3)
        return len(lines)

    def reindex(self) -> int:
        """Forget this store's rows and index its journal from the start; the lines read."""
        with self._lock:
            with transaction(self._db):
                for table in ("journals", "shards", "entries"):
                    self._db.execute(f"DELETE FROM {table} WHERE fingerprint = ?",
                                     (self.fingerprint,))
            return self._sync()

    # -- questions ------------------------------------------------------------------------

    def shard_names(self) -> list[str]:
        """Every indexed shard, in commit order."""
        with self._lock:
            return [name for (name,) in self._db.execute(
                "SELECT name FROM shards WHERE fingerprint = ? ORDER BY position",
                (self.fingerprint,))]

    def count(self) -> int:
        """Indexed entries."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM entries WHERE fingerprint = ?",
                                    (self.fingerprint,)).fetchone()[0]

    def locate(self, sha256: Iterable[str]) -> dict[str, tuple[str, int]]:
        """(shard, row) of each of ``sha256`` that is indexed (absent ones are left out)."""
        found: dict[str, tuple[str, int]] = {}
        with self._lock:
            for batch in batches(dict.fromkeys(sha256)):
                marks = ",".join("?" * len(batch))
                found.update((sha, (shard, row)) for sha, shard, row in self._db.execute(
                    f"SELECT sha256, shard, row FROM entries WHERE fingerprint = ? "
                    f"AND sha256 IN ({marks})", [self.fingerprint, *batch]))
        return found

    def missing(self, sha256: Iterable[str]) -> list[str]:
        """The ones of ``sha256`` that are not indexed, unique, in first-seen order. A batch
        whose every key is indexed (a rerun's usual answer) costs one count, not a row each."""
        absent: list[str] = []
        with self._lock:
            for batch in batches(dict.fromkeys(sha256)):
                marks = ",".join("?" * len(batch))
                where = f"WHERE fingerprint = ? AND sha256 IN ({marks})"
                values = [self.fingerprint, *batch]
                found = self._db.execute(f"SELECT COUNT(*) FROM entries {where}",
                                         values).fetchone()[0]
                if found == len(batch):
                    continue
                held = {sha for (sha,) in self._db.execute(
                    f"SELECT sha256 FROM entries {where}", values)}
                absent += [sha for sha in batch if sha not in held]
        return absent

    def sha256s(self) -> list[str]:
        """Every indexed sha256, in storage order (shard by shard, row by row)."""
        with self._lock:
            return [sha for (sha,) in self._db.execute(
                "SELECT e.sha256 FROM entries e JOIN shards s ON s.fingerprint = e.fingerprint "
                "AND s.name = e.shard WHERE e.fingerprint = ? ORDER BY s.position, e.row",
                (self.fingerprint,))]


def _parse(line: bytes) -> tuple[str, list[str]] | None:
    try:
        item = json.loads(line)
        return str(item["shard"]), [str(s) for s in item["sha256"]]
    except (ValueError, KeyError, TypeError):
        return None


def open_index(folder: Path) -> EntryIndex | None:
    """The synced index of the store at ``folder``, or None where the database cannot be
    written (a read-only cache folder): callers then read the journal as before."""
    try:
        index = EntryIndex(folder)
    except (sqlite3.OperationalError, PermissionError, OSError):
        return None
    try:
        index.sync()
    except (sqlite3.OperationalError, PermissionError):
        index.close()
        return None
    except BaseException:
        index.close()
        raise
    return index


