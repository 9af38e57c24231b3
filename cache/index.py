"""The entry index: which shard and row hold an image's features, without reading every entry.

Tables in the cache folder's ``index.sqlite`` (:mod:`cache.database`)::

    journal_state(fingerprint PRIMARY KEY, inode, ingested, tail)  how much of the journal
    present_sets(fingerprint, keys, inode, ingested, tail)          large asks found complete
    shards(fingerprint, name, rows, position)                       one per committed shard
    entries(fingerprint, sha256, shard, row)                        one per cached image

The manifest journal (:mod:`cache.manifest`) stays the record of what is committed, written as
before, so every crash guarantee of the cache is the journal's; the index is derived from it
and kept up to date by whoever reads (and by a writer when it closes): :meth:`EntryIndex.sync`
ingests the lines appended since it last looked (``ingested`` bytes, complete lines only, so a
line being written is left for later), and indexes the whole journal again when it is not the
same file grown: another inode (gc, repair and recovery rewrite it), fewer bytes, or other
bytes just before where indexing stopped (``tail``: a hash of those 4 KB, as a rewritten
journal may be given the inode of the one it replaced). Ingesting is one transaction, so a
crash half-way leaves the index where it was, and ingesting the same lines again changes
nothing (the first shard that lists an image wins, as in the journal). ``pipeline cache
reindex`` drops a store's rows and indexes its journal from the start.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import warnings
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path

from .database import batches, open_database, transaction
from .errors import CacheIndexedWarning
from .faults import fault_point
from .files import sha256_bytes
from .manifest import MANIFEST_NAME

#: A store with more entries than this, indexed for the first time, says so (a one-off read of
#: its whole journal, seconds at a million entries).
ANNOUNCE_ENTRIES = 100_000
#: The fewest keys whose presence :meth:`EntryIndex.missing` remembers (below, asking costs
#: less than the digest of the keys)
REMEMBERED_KEYS = 10_000
#: The most entries :meth:`EntryIndex.missing` reads in one pass (their keys are held in a
#: set meanwhile: about 100 bytes each)
SCAN_LIMIT = 2_000_000
_TAIL_BYTES = 4096
# Entries inserted in one sorted batch while a journal is indexed: a bound on memory (about
# 150 bytes an entry); any size gives the same index
_INSERTED_TOGETHER = 1 << 18
_ATTEMPTS = 5  # times a sync starts again when the journal was replaced while it read it

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal_state (
    fingerprint TEXT PRIMARY KEY,
    inode INTEGER NOT NULL,
    ingested INTEGER NOT NULL,
    tail TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shards (
    fingerprint TEXT NOT NULL,
    name TEXT NOT NULL,
    rows INTEGER NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (fingerprint, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS present_sets (
    fingerprint TEXT NOT NULL,
    keys TEXT NOT NULL,
    inode INTEGER NOT NULL,
    ingested INTEGER NOT NULL,
    tail TEXT NOT NULL,
    PRIMARY KEY (fingerprint, keys)
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
    the cache folder above it. :meth:`sync` brings it up to date with the journal
    (:func:`open_index` does so first); the database is shared, so a query answers what the
    index holds now, which another process's sync may have moved on."""

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

    def _sync(self, again: bool = False) -> int:
        for _ in range(_ATTEMPTS):
            try:
                journal = open(self.folder / MANIFEST_NAME, "rb")
            except FileNotFoundError:
                journal = None
            with journal or nullcontext():
                lines = self._ingest(journal, again)
            if lines is not None:
                return lines
        raise sqlite3.OperationalError(f"{self.folder / MANIFEST_NAME} kept being replaced "
                                       f"while it was indexed")

    def _ingest(self, journal, again: bool) -> int | None:
        """Index ``journal`` (an open file, None when there is none) from where the index
        stopped (from the start when ``again``); None when the file is no longer the journal.

        Everything happens inside one write transaction, the journal's state read in it: two
        processes syncing at once take turns, and one that opened the journal before gc
        replaced it finds out (its file is not the one under the name any more) instead of
        indexing the old journal over the new one."""
        if not again and self._up_to_date(journal):
            return 0  # the usual answer, without taking the write lock
        with transaction(self._db):
            try:
                current = os.stat(self.folder / MANIFEST_NAME).st_ino
            except FileNotFoundError:
                current = 0
            # the file read is the file stat'ed, even if a rewrite renames another over it
            info = os.fstat(journal.fileno()) if journal else None
            inode, size = (info.st_ino, info.st_size) if info else (0, 0)
            if inode != current:
                return None
            row = None if again else self._db.execute(
                "SELECT inode, ingested, tail FROM journal_state WHERE fingerprint = ?",
                (self.fingerprint,)).fetchone()
            # The same journal, grown: the same inode (a rewrite makes a new file, but inodes
            # are reused) and the same bytes just before where indexing stopped.
            continued = (row is not None and row[0] == inode and size >= row[1]
                         and _tail(journal, row[1]) == row[2])
            if continued and row[1] == size:
                return 0  # nothing new: a stat, a lookup and a 4 KB read
            start = row[1] if continued else 0
            data = b""
            if journal is not None:
                journal.seek(start)
                data = journal.read(size - start)
            end = data.rfind(b"\n") + 1  # complete lines only: a line being written waits
            lines = data[:end].splitlines()
            indexed = self._index_lines(lines, continued)
            self._db.execute("INSERT OR REPLACE INTO journal_state VALUES (?, ?, ?, ?)",
                             (self.fingerprint, inode, start + end,
                              _tail(journal, start + end)))
        if row is None and not again and indexed > ANNOUNCE_ENTRIES:
            warnings.warn(f"{self.folder}: indexed its {indexed:,} entries from manifest.jsonl "
                          f"into {self.folder.parent / 'index.sqlite'} (once: later commands "
                          f"read the index)", CacheIndexedWarning, stacklevel=4)
        return len(lines)

    def _up_to_date(self, journal) -> bool:
        """Whether the index holds all of ``journal``, which is still the file under the name:
        a stat, an fstat, a lookup and a 4 KB read."""
        info = os.fstat(journal.fileno()) if journal else None
        inode, size = (info.st_ino, info.st_size) if info else (0, 0)
        try:
            current = os.stat(self.folder / MANIFEST_NAME).st_ino
        except FileNotFoundError:
            current = 0
        row = self._db.execute(
            "SELECT inode, ingested, tail FROM journal_state WHERE fingerprint = ?",
            (self.fingerprint,)).fetchone()
        return (row is not None and inode == current == row[0] and size == row[1]
                and _tail(journal, size) == row[2])

    def _index_lines(self, lines: list[bytes], continued: bool) -> int:
        """Add the shards and entries of journal ``lines`` (after dropping this store's rows,
        unless ``continued``); the entries added."""
        indexed = 0
        if not continued:
            for table in ("shards", "entries"):
                self._db.execute(f"DELETE FROM {table} WHERE fingerprint = ?",
                                 (self.fingerprint,))
        position = self._db.execute(
            "SELECT COALESCE(MAX(position), -1) + 1 FROM shards WHERE fingerprint = ?",
            (self.fingerprint,)).fetchone()[0]
        waiting: list[tuple[str, str, int]] = []  # (sha256, shard, row), in journal order
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
            waiting += ((sha, name, i) for i, sha in enumerate(shas))
            indexed += len(shas)
            if len(waiting) >= _INSERTED_TOGETHER:
                self._insert_entries(waiting)
            fault_point("index.ingest")
        self._insert_entries(waiting)
        return indexed

    def _insert_entries(self, waiting: list[tuple[str, str, int]]) -> None:
        """Insert ``waiting`` entries in the order of their keys, and empty it. Random sha256
        keys inserted as they come land on random pages of the table, and once it outgrows
        SQLite's page cache each insert reads a page back (at 10^5 entries a store, 2.1 GB of
        reads from the write-ahead log); in key order, each page is visited once per batch.
        The sort is stable, so of two entries for one image the first in the journal is still
        inserted first, and wins."""
        waiting.sort(key=lambda entry: entry[0])
        self._db.executemany("INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?)",
                             ((self.fingerprint, *entry) for entry in waiting))
        waiting.clear()

    def reindex(self) -> int:
        """Index this store's journal from the start, its old rows dropped in the same
        transaction (readers never see it empty); the lines read."""
        with self._lock:
            return self._sync(again=True)

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

    def missing(self, wanted: list[str]) -> list[str]:
        """The ones of ``wanted`` (no key twice) that are not indexed, in their order.

        A large ask (:data:`REMEMBERED_KEYS` keys or more) that finds every key indexed is
        remembered, by a digest of the keys, with the index's journal state (what it has
        ingested: ``journal_state``); the same keys asked again while that state holds, as
        every extract of an unchanged folder asks, are answered from the memo (10^5 keys:
        about 10 ms against 60). Entries change only when the index ingests its journal,
        which moves that state, so the memo cannot outlive what it says; the state and the
        entries are read in one snapshot.

        Asked about a good part of the store (a fourth or more of its entries, up to
        :data:`SCAN_LIMIT`), it reads the store's keys in one pass of the primary-key index
        (10^5 keys: 55 ms against 205 ms of lookups); else it looks keys up a batch at a time,
        and a batch whose every key is indexed (a rerun's usual answer) costs one count."""
        if not wanted:
            return []
        keys = _keys_digest(wanted) if len(wanted) >= REMEMBERED_KEYS else None
        with self._lock:
            self._db.execute("BEGIN")  # one snapshot: the journal state and the entries agree
            try:
                state = self._db.execute(
                    "SELECT inode, ingested, tail FROM journal_state WHERE fingerprint = ?",
                    (self.fingerprint,)).fetchone()
                if keys and state and self._db.execute(
                        "SELECT 1 FROM present_sets WHERE fingerprint = ? AND keys = ? AND "
                        "inode = ? AND ingested = ? AND tail = ?",
                        (self.fingerprint, keys, *state)).fetchone():
                    return []
                absent = self._lookup_missing(wanted)
            finally:
                self._db.execute("COMMIT")
            if keys and state and not absent:
                self._remember(keys, state)
        return absent

    def _remember(self, keys: str, state: tuple[int, int, str]) -> None:
        """Record that the keys of digest ``keys`` were all indexed at journal ``state``;
        memos of other states are dropped (the state only moves on). Skipped, not waited
        for, while another process writes: a read-only command never waits on a memo."""
        try:
            with transaction(self._db, wait=False):
                self._db.execute(
                    "DELETE FROM present_sets WHERE fingerprint = ? AND NOT "
                    "(inode = ? AND ingested = ? AND tail = ?)", (self.fingerprint, *state))
                self._db.execute("INSERT OR REPLACE INTO present_sets VALUES (?, ?, ?, ?, ?)",
                                 (self.fingerprint, keys, *state))
        except sqlite3.OperationalError:
            pass  # busy or read-only: a memo only; the answer stands

    def _lookup_missing(self, wanted: list[str]) -> list[str]:
        """The keys of ``wanted`` not indexed, asked of the entries (see :meth:`missing`)."""
        absent: list[str] = []
        entries = self._db.execute("SELECT COUNT(*) FROM entries WHERE fingerprint = ?",
                                   (self.fingerprint,)).fetchone()[0]
        if 4 * len(wanted) >= entries and entries <= SCAN_LIMIT:
            held = {sha for (sha,) in self._db.execute(
                "SELECT sha256 FROM entries WHERE fingerprint = ?", (self.fingerprint,))}
            absent_set = set(wanted).difference(held)  # in C; usually empty
            return [sha for sha in wanted if sha in absent_set] if absent_set else []
        for batch in batches(wanted):
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


def _keys_digest(keys: list[str]) -> str:
    """A digest of ``keys`` in their order (the memo's name for a set of keys)."""
    return sha256_bytes("\n".join(keys).encode("utf-8", "surrogateescape"))


def _tail(journal, offset: int) -> str:
    """A hash of the (up to) 4 KB of ``journal`` before ``offset``; "" at 0 or without one."""
    if journal is None or offset == 0:
        return ""
    journal.seek(max(0, offset - _TAIL_BYTES))
    return sha256_bytes(journal.read(min(offset, _TAIL_BYTES)))[:32]


def _parse(line: bytes) -> tuple[str, list[str]] | None:
    try:
        item = json.loads(line)
        return str(item["shard"]), [str(s) for s in item["sha256"]]
    except (ValueError, KeyError, TypeError):
        return None


def open_index(folder: Path) -> EntryIndex | None:
    """The synced index of the store at ``folder``, or None where the database cannot be used
    (a read-only cache folder, a file system without the locks SQLite's WAL needs, a damaged
    database): callers then read the journal as before."""
    try:
        index = EntryIndex(folder)
    except (sqlite3.Error, OSError):
        return None
    try:
        index.sync()
    except (sqlite3.Error, OSError):
        index.close()
        return None
    except BaseException:
        index.close()
        raise
    return index


