"""The hash state: which sha256 a file had when its stat was what it is now, as DVC keeps one.

A table in the cache's SQLite database, ``<cache dir>/index.sqlite``::

    file_states(path BLOB PRIMARY KEY, device, inode, size, mtime_ns, ctime_ns, sha256,
                hashed_ns)

Hashing every image of a large data set on every command costs minutes; a ``stat`` costs
microseconds. A file whose (device, inode, size, mtime_ns, ctime_ns) equal the recorded ones
is taken to have the recorded content (the ctime catches a rewrite that puts the old mtime
back), with one exception, the racy-timestamp rule (as git's index): a file modified within
:data:`RACY_NS` of the moment it was hashed could have been changed again within the same
timestamp tick, so such a record is never trusted and the file is hashed again. The rule
compares this machine's clock with the file's time stamps: a file server whose clock is behind
by more than that can defeat it (``run --rehash`` then reads everything).
``path`` is the file's absolute path as bytes (file names need not be valid UTF-8).

A second table vouches for a folder's files at once::

    folder_states(folder BLOB PRIMARY KEY, listing, sha256)

``listing`` is a digest the caller makes of the folder as listed (every file's name and stat,
and which of them it asks about); ``sha256`` the asked files' hashes, 32 bytes each, in order.
A folder is recorded only when, in the same transaction, every file asked about has a record
with the stat listed, not racy, and the hash recorded for the folder, so an unchanged listing
vouches for them as those records would, without a lookup per file: at 10^5 images, 0.25 s
of a rerun's scan. Recording a hashed file (another process's ``--rehash`` too), or
forgetting one, drops its folder's record.

The state is only ever a shortcut: a lost or damaged database costs a re-hash, never a wrong
answer (see :mod:`cache.database` for what happens to one that cannot be read).
"""

from __future__ import annotations

import os
import sqlite3
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from .database import BATCH, INDEX_NAME, batches, open_database, transaction
from .errors import CacheDatabaseWarning

#: A record whose file was modified less than this before it was hashed is not trusted: 2 s
#: covers the coarsest timestamps in use (FAT's) and clocks a little apart on a network mount.
RACY_NS = 2_000_000_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS file_states (
    path BLOB PRIMARY KEY,
    device INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    hashed_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS folder_states (
    folder BLOB PRIMARY KEY,
    listing TEXT NOT NULL,
    sha256 BLOB NOT NULL
) WITHOUT ROWID;
"""


class FileStat(NamedTuple):
    """What the hash state compares: a file's identity and version, from one ``stat`` (a
    tuple: one per file is made and compared at every command)."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int   # changes with a rewrite that puts the old mtime back (cp -p, rsync -t)

    @classmethod
    def of(cls, info: os.stat_result) -> FileStat:
        """The fields of ``info`` (from ``os.stat`` or ``DirEntry.stat``) the state keys on."""
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def not_racy(stat: FileStat, hashed_ns: int) -> bool:
    """Whether a record of a file with ``stat``, hashed from ``hashed_ns`` on, can be trusted
    later: its last modification was at least :data:`RACY_NS` before reading began."""
    return hashed_ns - stat.mtime_ns >= RACY_NS


def _key(path: Path | str) -> bytes:
    """The record's key: the absolute, normalised path as bytes. A string that is already
    so (no ``.`` or ``..`` component, no doubled or trailing separator: a data folder's
    listing gives such paths) skips ``abspath``, a third of the cost of a lookup; where paths
    have a second separator (Windows) every path goes through ``abspath``."""
    if isinstance(path, str) and os.altsep is None and path.startswith(os.sep) \
            and not path.endswith(os.sep) and _NOT_NORMAL not in path and _DOUBLED not in path:
        return os.fsencode(path)
    return os.fsencode(os.path.abspath(path))


_NOT_NORMAL = os.sep + "."   # starts every "." and ".." component (and hidden names: slow path)
_DOUBLED = os.sep + os.sep


class HashState:
    """The recorded sha256 of files under one cache folder's database.

    ``HashState(cache_dir)`` opens (creating when needed) ``cache_dir/index.sqlite``;
    :meth:`known` answers from it, :meth:`record` adds what was hashed. Use as a context
    manager, or call :meth:`close`.
    """

    def __init__(self, cache_dir: Path):
        self.path = Path(cache_dir) / INDEX_NAME
        self._db = open_database(Path(cache_dir), _SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> HashState:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def known(self, files: Iterable[tuple[str | Path, FileStat]]) -> dict[str | Path, str]:
        """The sha256 of each of ``files`` whose recorded stat equals the given one and whose
        record is not racy; files absent from the result must be hashed."""
        found: dict[str | Path, str] = {}
        try:
            self._known(files, found)
        except sqlite3.Error as exc:  # a shortcut only: hash what it cannot vouch for
            warnings.warn(f"{self.path}: the hash state cannot be read ({exc}); the files it "
                          f"did not answer for are hashed", CacheDatabaseWarning, stacklevel=2)
        return found

    def _known(self, files: Iterable[tuple[str | Path, FileStat]],
               found: dict[str | Path, str]) -> None:
        for batch in batches(files, BATCH):
            wanted = {_key(path): (path, stat) for path, stat in batch}
            marks = ",".join("?" * len(wanted))
            rows = self._db.execute(
                f"SELECT path, device, inode, size, mtime_ns, ctime_ns, sha256, hashed_ns "
                f"FROM file_states WHERE path IN ({marks})", list(wanted))
            for key, device, inode, size, mtime_ns, ctime_ns, sha256, hashed_ns in rows:
                path, stat = wanted[key]
                if stat == (device, inode, size, mtime_ns, ctime_ns) and \
                        not_racy(stat, hashed_ns):
                    found[path] = sha256

    def known_folders(self, listings: dict[str, str]) -> dict[str, list[str]]:
        """For each folder of ``listings`` ({absolute folder path: digest of its listing})
        recorded with that same digest, the sha256 recorded for its files, in their order.
        Folders absent from the result are asked about file by file (:meth:`known`)."""
        found: dict[str, list[str]] = {}
        try:
            for batch in batches(listings, BATCH):
                keys = {_key(folder): folder for folder in batch}
                marks = ",".join("?" * len(keys))
                for key, listing, blob in self._db.execute(
                        f"SELECT folder, listing, sha256 FROM folder_states "
                        f"WHERE folder IN ({marks})", list(keys)):
                    folder = keys[key]
                    if listing == listings[folder]:
                        text = blob.hex()
                        found[folder] = [text[i:i + 64] for i in range(0, len(text), 64)]
        except sqlite3.Error as exc:
            warnings.warn(f"{self.path}: the hash state cannot be read ({exc}); the files it "
                          f"did not answer for are hashed", CacheDatabaseWarning, stacklevel=2)
            return {}
        return found

    def record_folders(self, folders: dict[str, tuple[str, list[tuple[str, FileStat, str]]]]
                       ) -> None:
        """Remember ``{folder: (listing digest, [(path, stat as listed, sha256)] of the files
        asked about, in order)}``. A folder is written only if, read in the same transaction,
        each of its files has a record of that stat and sha256 that is not racy: a record
        another process wrote meanwhile (a ``--rehash`` that found other bytes) keeps it out."""
        if not folders:
            return
        try:
            with transaction(self._db):
                files = [(path, stat) for _, entries in folders.values()
                         for path, stat, _ in entries]
                current: dict[str | Path, str] = {}
                self._known(files, current)
                rows = [(_key(folder), listing,
                         b"".join(bytes.fromhex(sha) for _, _, sha in entries))
                        for folder, (listing, entries) in folders.items()
                        if all(current.get(path) == sha for path, _, sha in entries)]
                self._db.executemany("INSERT OR REPLACE INTO folder_states VALUES (?, ?, ?)",
                                     rows)
        except sqlite3.Error as exc:  # a shortcut only: these folders are asked about again
            warnings.warn(f"{self.path}: the hash state cannot be written ({exc}); these "
                          f"folders' files are looked up one by one next time",
                          CacheDatabaseWarning, stacklevel=2)

    def record(self, hashed: Iterable[tuple[str | Path, FileStat, str, int]]) -> None:
        """Remember ``(path, stat, sha256, hashed_ns)`` for each file hashed: ``stat`` taken
        before reading it, ``hashed_ns`` the time (``time.time_ns()``) reading began. The
        records of their folders go (:meth:`record_folders` writes them again where it
        can)."""
        rows = [(_key(path), stat.device, stat.inode, stat.size, stat.mtime_ns, stat.ctime_ns,
                 sha256,
                 hashed_ns) for path, stat, sha256, hashed_ns in hashed]
        if not rows:
            return
        try:
            with transaction(self._db):
                self._db.executemany("DELETE FROM folder_states WHERE folder = ?",
                                     ((folder,) for folder in _folders_of(r[0] for r in rows)))
                self._db.executemany(
                    "INSERT OR REPLACE INTO file_states VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:  # the next command hashes these files again: no more
            warnings.warn(f"{self.path}: the hash state cannot be written ({exc}); these "
                          f"files are hashed again next time", CacheDatabaseWarning,
                          stacklevel=2)

    def forget(self, paths: Iterable[Path] | None = None) -> int:
        """Drop the records of ``paths`` (every record when None), and of their folders: the
        way to force those files to be hashed again. Returns how many file records were
        dropped."""
        with transaction(self._db):
            if paths is None:
                self._db.execute("DELETE FROM folder_states")
                return self._db.execute("DELETE FROM file_states").rowcount
            keys = [_key(p) for p in paths]
            self._db.executemany("DELETE FROM folder_states WHERE folder = ?",
                                 ((folder,) for folder in _folders_of(keys)))
            dropped = 0
            for batch in batches(((key,) for key in keys), BATCH):
                dropped += self._db.executemany("DELETE FROM file_states WHERE path = ?",
                                                batch).rowcount
            return dropped


def _folders_of(keys: Iterable[bytes]) -> set[bytes]:
    """The folder keys of file keys (their parent folders)."""
    return {os.path.dirname(key) for key in keys}


def open_hash_state(cache_dir: Path) -> HashState | None:
    """The hash state of ``cache_dir``, or None where its database cannot be used (a read-only
    cache folder, a file system without the locks SQLite's WAL needs): every file is then
    hashed, as without a state. A cache folder that cannot be made at all raises OSError, as
    it would for the shards."""
    try:
        return HashState(cache_dir)
    except sqlite3.Error as exc:
        warnings.warn(f"{Path(cache_dir) / INDEX_NAME}: cannot be used ({exc}); every image "
                      f"is hashed this time", CacheDatabaseWarning, stacklevel=2)
        return None
