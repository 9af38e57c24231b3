"""One walk of the data folder per command: every file under ``data.root`` and its stat.

Two things need every file's stat: the lock, which records the data folder as a count and a
digest of (path, size, mtime) so that an added, removed or modified file makes the stages that
read images stale; and the scan, whose hash state trusts a recorded sha256 only while the
file's stat is unchanged. Each ``stat`` costs a system call, and at 10^5 images a walk of the
folder is a good part of a second: a command lists the folder once (:func:`list_data_folder`)
and both read that listing.

The walk is ``os.walk``'s: top-down, symlinked folders not descended (so a symlink loop cannot
trap it), folders and files in sorted order; ``stat`` follows a symlinked file to its target.
Per file the listing keeps its name (its folder's path is kept once) and six integers in two
arrays, about 120 bytes a file: a command that only compares the digest (``status``, a rerun
with nothing to do) holds a name string per file and nothing else per file.
"""

from __future__ import annotations

import errno as errnos
import hashlib
import json
import os
import stat
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from cache.hashstate import FileStat

#: ``kind`` of a file whose ``stat`` succeeded: a regular file, or something else (a named
#: pipe or device would block a read forever or never end). A failed ``stat`` keeps its
#: (positive) errno as its kind.
REGULAR, NOT_REGULAR = 0, -1


@dataclass
class DataFolderListing:
    """Every file under one folder, in walk order, with the fields of its ``stat``.

    ``folders`` holds (absolute folder path, file names in sorted order) in walk order; the
    arrays hold one value per file in the same order. ``errors`` are the folders the walk
    could not list (``OSError`` with ``filename``).
    """

    root: str
    folders: list[tuple[str, list[str]]] = field(default_factory=list)
    errors: list[OSError] = field(default_factory=list)
    # st_dev, st_ino, st_size: unsigned (an inode number may use all 64 bits)
    _ids: array = field(default_factory=lambda: array("Q"))
    # st_mtime_ns, st_ctime_ns, kind: signed (a time stamp may precede 1970)
    _times: array = field(default_factory=lambda: array("q"))
    _positions: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self._times) // 3

    def files(self) -> Iterator[tuple[str, str, int]]:
        """(folder, name, position) of every file, in walk order."""
        position = 0
        for folder, names in self.folders:
            for name in names:
                yield folder, name, position
                position += 1

    def stat_at(self, position: int) -> FileStat | None:
        """:func:`file_stat` of the file at ``position``, as the walk found it."""
        i = 3 * position
        kind = self._times[i + 2]
        if kind == REGULAR:
            ids, times = self._ids, self._times
            return FileStat(ids[i], ids[i + 1], ids[i + 2], times[i], times[i + 1])
        if kind == NOT_REGULAR:
            return None
        raise OSError(kind, os.strerror(kind))

    @cached_property
    def folder_starts(self) -> list[int]:
        """The position of each folder's first file, in walk order (then the file count)."""
        starts, position = [], 0
        for _, names in self.folders:
            starts.append(position)
            position += len(names)
        return [*starts, position]

    def folder_digest(self, index: int, asked: Sequence[int]) -> str:
        """A digest of folder ``index`` (of :attr:`folders`) as listed: its path, its files'
        names and every field of their stats; and of ``asked``, the positions within it of
        the files a caller asks about. Equal digests: nothing in the folder changed stat."""
        folder, names = self.folders[index]
        begin, end = 3 * self.folder_starts[index], 3 * self.folder_starts[index + 1]
        digest = hashlib.sha256(os.fsencode(folder) + b"\0")
        digest.update(len(names).to_bytes(8, "little"))  # the parts below, told apart
        digest.update("\0".join(names).encode("utf-8", "surrogateescape"))
        digest.update(self._ids[begin:end].tobytes())
        digest.update(self._times[begin:end].tobytes())
        digest.update(array("q", asked).tobytes())
        return digest.hexdigest()

    def position_of(self, path: str) -> int | None:
        """Where the file ``path`` (absolute, as the walk joined it) is listed, or None."""
        if self._positions is None:
            self._positions = {os.path.join(folder, name): position
                               for folder, name, position in self.files()}
        return self._positions.get(path)

    @cached_property
    def summary(self) -> dict:
        """What the lock records of the folder: ``{"files": count, "hash": digest}``, the
        digest over (path relative to the root, size, mtime_ns) of every file whose stat
        succeeded, as canonical JSON (:func:`pipeline.json_values.json_digest` of that list,
        computed a file at a time rather than from one string of the whole listing)."""
        prefix = len(os.path.join(self.root, ""))
        digest = hashlib.sha256(b"[")
        count = 0
        # a folder's entries encoded at once: json's C encoder, not a call per file
        encode = json.JSONEncoder(sort_keys=True, default=str).encode
        ids, times = self._ids, self._times
        position = 0
        for folder, names in self.folders:
            relative = os.path.join(folder[prefix:], "") if len(folder) > len(self.root) else ""
            entries = []
            for name in names:
                i = 3 * position
                position += 1
                if times[i + 2] <= 0:  # listed unless its stat failed
                    entries.append((relative + name, ids[i + 2], times[i]))
            if entries:
                digest.update(((", " if count else "") + encode(entries)[1:-1]).encode())
                count += len(entries)
        digest.update(b"]")
        return {"files": count, "hash": digest.hexdigest()}


def file_stat(path: str | os.PathLike) -> FileStat | None:
    """The stat of ``path`` (a symlink followed) as the hash state keys it, or None when it is
    not a regular file; raises OSError when it cannot be stat'ed."""
    info = os.stat(path)
    return FileStat.of(info) if stat.S_ISREG(info.st_mode) else None


def list_data_folder(root: str | os.PathLike) -> DataFolderListing:
    """Walk ``root`` once and stat every file under it (see the module docstring)."""
    listing = DataFolderListing(root=os.fspath(root))
    # this loop runs once per file of the data set: names looked up once, paths joined by hand
    ids, times = listing._ids.extend, listing._times.extend
    stat_path, is_regular = os.stat, stat.S_ISREG
    for folder, dirs, names in os.walk(listing.root, onerror=listing.errors.append):
        dirs.sort()
        names.sort()
        listing.folders.append((folder, names))
        head = os.path.join(folder, "")
        for name in names:
            try:
                info = stat_path(head + name)
            except OSError as exc:
                ids((0, 0, 0))
                times((0, 0, exc.errno or errnos.EIO))
                continue
            ids((info.st_dev, info.st_ino, info.st_size))
            times((info.st_mtime_ns, info.st_ctime_ns,
                   REGULAR if is_regular(info.st_mode) else NOT_REGULAR))
    return listing
