"""The labelled image folder: find images, identify them by content, split them, find duplicates.

Two folder layouts are understood (``data.root`` in the stages.yaml reference):

- ``root/<class>/<image>``: the split is decided per image by a seeded hash of its content, so a
  given image always lands in the same split, whatever else is added or removed;
- ``root/<split>/<class>/<image>`` with split folders named ``train``, ``validation``, ``test``.

Image files are those ending in .jpg, .jpeg, .png, .bmp or .gif (any case); class folders are
searched recursively without following symlinked folders (so a symlink loop cannot trap the
scan). Everything is listed in sorted order, so the result does not depend on the filesystem.

Or a labels table, ``data.labels``: a CSV file (UTF-8, an Excel byte-order mark allowed, comma
separated, standard double-quote quoting) whose first line names its columns:

- ``path`` (required): the image file, relative to ``data.root``, '/'-separated; it may go
  through subfolders (``a/b/c.jpg``). ``./`` and doubled slashes are ignored; an absolute path,
  a ``..`` component or a backslash is an error, so that every path stays inside the root (the
  dataset view records paths relative to it). Any file name is accepted, not only the image
  extensions above: a listed file that is not an image is skipped at decoding, with the reason.
- ``label`` (required): the class, any non-empty text; the classes are the sorted set of them.
- ``split`` (optional): ``train``, ``validation`` or ``test``, or blank. A blank cell (or no
  split column) gets the seeded content-hash split of ``data.split``, as the flat layout does,
  so a table may fix some splits only: to keep a given test set and split the rest 80/20, fill
  in ``test`` on those rows and set ``data.split`` to ``{train: 0.8, validation: 0.2, test: 0}``.

Columns may come in any order. Spaces around cells and column names are ignored (so a file
whose name starts or ends with a space cannot be listed); lines of blank cells only are skipped;
a row shorter than the header has blank cells at its end, and a trailing comma (blank cells
past the header's last column, or a blank last column name) is ignored. Labels and splits are
case-sensitive. Rows are kept in table order. Paths are relative to ``data.root`` wherever the
table itself lives.

The problems of the header, and then all those of the rows, are one :class:`DataError` each,
raised before any image is read, that names the file and, for each kind of problem, how many
rows have it and the line numbers of the first :data:`SHOWN_ROWS`: no header row; a missing
``path`` or ``label`` column, an unknown column (the allowed ones are named) or one named twice;
a row with more non-blank cells than the header has columns; an empty path or label; a path
outside the root or with a backslash; an unknown split; the same path on two rows (after
normalising); no rows at all. A listed file that does not exist is left out, with one
:class:`~pipeline.errors.MissingImageWarning` for all of them, and recorded in
``DatasetScan.missing`` (the run's skipped.csv lists them); when none exists, it is an error
(the paths are probably not relative to the root). Images under the root that the table does not
list are not part of the dataset, without a warning: the table is the dataset. Duplicates and
leakage are found by content, as for the folder layouts.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import time
import warnings
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from cache.files import sha256_file, sha256_text_digest
from cache.hashstate import FileStat, HashState, not_racy

from ..config import SPLITS, DataConfig
from ..errors import (
    DataError,
    DuplicateImageWarning,
    EmptyClassWarning,
    LeakageWarning,
    MissingImageWarning,
)
from .listing import DataFolderListing, file_stat, list_data_folder
from .names import display_path
from .table import ImageTable

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
#: The columns of a labels table: required, then optional.
LABEL_COLUMNS = ("path", "label")
OPTIONAL_LABEL_COLUMNS = ("split",)
#: How many offending rows an error or warning names (it always gives the count).
SHOWN_ROWS = 5


class ImageRecord(NamedTuple):
    """One image file of the dataset (a tuple: one per image is made at every scan)."""

    path: str         # absolute path (a string: a Path per image costs more than the stat)
    relpath: str      # path relative to the data root, '/'-separated
    label: str        # class folder name, or the labels table's label
    split: str        # train | validation | test
    sha256: str       # hex sha256 of the file's bytes
    size: int         # bytes


@dataclass(frozen=True)
class UnreadableFile:
    """A file that looked like an image but could not even be read."""

    relpath: str
    reason: str
    line: int = 0     # the line of the labels table that lists it; 0 for the folder layouts


@dataclass(frozen=True)
class DuplicateGroup:
    """Files with identical bytes: their paths (relative to the data root), classes and
    splits, position by position; ``kind`` says why it matters."""

    sha256: str
    paths: tuple[str, ...]
    classes: tuple[str, ...]
    splits: tuple[str, ...]

    @property
    def kind(self) -> str:
        """'leakage' (two splits), 'conflicting-labels' (two classes) or 'copy'."""
        if len(set(self.splits)) > 1:
            return "leakage"
        if len(set(self.classes)) > 1:
            return "conflicting-labels"
        return "copy"

    def to_json(self) -> dict:
        """Plain data, as dataset views store it."""
        return {"kind": self.kind, "sha256": self.sha256, "paths": list(self.paths),
                "classes": list(self.classes), "splits": list(self.splits)}

    @classmethod
    def from_json(cls, payload: dict) -> DuplicateGroup:
        """Inverse of :meth:`to_json` (``kind`` is derived, not read)."""
        return cls(sha256=payload["sha256"], paths=tuple(payload["paths"]),
                   classes=tuple(payload["classes"]), splits=tuple(payload["splits"]))


@dataclass
class DatasetScan:
    """Everything found under the data root, in deterministic order."""

    root: Path
    classes: list[str]
    images: list[ImageRecord]
    split_folders: bool
    unreadable: list[UnreadableFile] = field(default_factory=list)
    duplicates: list[DuplicateGroup] = field(default_factory=list)
    labels: Path | None = None  # the labels table the images come from; None: class folders
    # files the labels table lists that do not exist (reason: "no such file (<table> line N)")
    missing: list[UnreadableFile] = field(default_factory=list)

    def image_table(self) -> ImageTable:
        """The images as columns (relative paths, labels, splits, sha256)."""
        images = self.images
        return ImageTable.from_columns(self.classes, (i.relpath for i in images),
                                       (i.label for i in images), (i.split for i in images),
                                       (i.sha256 for i in images))

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class: {split: {class: n}}."""
        table: dict[str, dict[str, int]] = {s: {c: 0 for c in self.classes} for s in SPLITS}
        for image in self.images:
            table[image.split][image.label] += 1
        return table


def split_for(sha256: str, fractions: tuple[float, float, float], seed: int) -> str:
    """The split of an image from its content hash alone.

    A uniform number in [0, 1) is drawn from sha256(seed, content hash) and cut at the
    cumulative fractions. Each image's split depends on nothing else, so adding images never
    moves an existing one, identical files always share a split (no leakage by copying), and
    within every class the fractions hold in expectation (not exactly: draws are independent).
    """
    draw = sha256_text_digest(f"split:{seed}:{sha256}")
    u = int.from_bytes(draw[:8], "big") / 2.0 ** 64
    train, validation, _ = fractions
    if u < train:
        return "train"
    if u < train + validation:
        return "validation"
    return "test"


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _list_class_folders(folder: Path) -> list[Path]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"cannot list {folder}: {exc.strerror}") from None
    return [Path(e.path) for e in entries
            if not e.name.startswith(".") and e.is_dir(follow_symlinks=True)]


def _relpath(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


class _Candidate(NamedTuple):
    """A file to identify: where it is, its label, its split (None: the hash decides), the
    line of the labels table that lists it (0 for the folder layouts) and its position in the
    data folder's listing (-1: not listed, stat it)."""

    path: str
    relpath: str
    label: str
    split: str | None
    line: int = 0
    position: int = -1


def scan_dataset(data: DataConfig, hash_workers: int = 4,
                 hash_state: HashState | None = None, rehash: bool = False,
                 listing: DataFolderListing | None = None,
                 hash_files: FileHasher | None = None) -> DatasetScan:
    """Find, hash and split every image under ``data.root`` (or every file ``data.labels``
    lists); report duplicates and leakage.

    ``listing`` is this command's walk of ``data.root`` (:func:`list_data_folder`), whose
    stats the scan uses instead of taking its own; without one, the folder layouts walk the
    root here. With a ``hash_state``, a file whose stat is the one recorded when it was last
    hashed is not read again (:mod:`cache.hashstate`); ``rehash`` reads every file all the
    same (and records what it finds). The files to read are hashed by ``hash_files``
    (default: :func:`hash_in_threads` of ``hash_workers`` threads; extraction on a cluster
    has its workers hash them). Raises :class:`DataError` when the folder has no class
    folders or mixes split folders with class folders, and for the problems of a labels table
    the module's docstring lists. Unreadable files are listed in ``unreadable`` and files a
    labels table lists that do not exist in ``missing``, not raised.
    """
    root = data.root
    folder_errors: list[OSError] = []  # folders os.walk could not list
    if data.labels is not None:
        candidates, classes = _candidates_from_table(data.labels, root, listing)
        split_folders = False
    else:
        if listing is None:
            listing = list_data_folder(root)
        candidates, classes, split_folders = _candidates_from_folders(root, listing,
                                                                      folder_errors)

    def stat_of(item: _Candidate) -> FileStat | str:
        try:
            info = file_stat(item.path) if item.position < 0 else \
                listing.stat_at(item.position)
        except OSError as exc:
            if item.line and exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return _MISSING  # listed by the table, not there
            return f"unreadable: {exc.strerror or type(exc).__name__}"
        # a named pipe or device would block the read forever or never end
        return "not a regular file" if info is None else info

    # in this thread: a stat costs less than handing it to a pool
    stats = [stat_of(item) for item in candidates]
    known, failed = _identify(candidates, stats, listing, hash_state, rehash,
                              hash_files or hash_in_threads(hash_workers))

    fractions = (data.split.train, data.split.validation, data.split.test)
    seed = data.split.seed
    images, unreadable, missing = [], [], []
    for item, info in zip(candidates, stats):
        sha = known.get(item.path)
        if sha is not None:
            images.append(ImageRecord(item.path, item.relpath, item.label,
                                      item.split or split_for(sha, fractions, seed),
                                      sha, info.size))
        elif info is _MISSING:
            missing.append(UnreadableFile(item.relpath, f"no such file (line {item.line} of "
                                                        f"{data.labels.name})", item.line))
        else:
            reason = failed[item.path] if isinstance(info, FileStat) else info
            unreadable.append(UnreadableFile(item.relpath, reason, item.line))
    if missing and len(missing) == len(candidates):
        raise DataError(f"{data.labels}: none of the {len(missing)} files it lists exists; "
                        f"paths are relative to data.root ({root}): "
                        f"{_rows_shown(missing)}")
    for error in folder_errors:
        folder = Path(error.filename) if error.filename else root
        unreadable.append(UnreadableFile(_relpath(folder, root) + "/",
                                         f"unreadable folder: {error.strerror}"))
    scan = DatasetScan(root=root, classes=sorted(classes), images=images,
                       split_folders=split_folders, unreadable=unreadable,
                       labels=data.labels, missing=missing)
    scan.duplicates = find_duplicates(images)
    return scan


class HashedFile(NamedTuple):
    """What reading one file found: its sha256 and the size and mtime of the file read (from
    the open file, after reading), or why it could not be read."""

    path: str
    sha256: str | None   # None: unreadable
    error: str           # why not ("" when read)
    size: int = -1
    mtime_ns: int = -1


#: Hashes files: given absolute paths, yields a :class:`HashedFile` for each, in any order.
FileHasher = Callable[[list[str]], Iterable[HashedFile]]


def hash_file(path: str) -> HashedFile:
    """Read and hash one file."""
    try:
        with open(path, "rb") as fh:
            sha = sha256_file(fh)
            info = os.fstat(fh.fileno())
    except OSError as exc:
        return HashedFile(path, None, f"unreadable: {exc.strerror or type(exc).__name__}")
    return HashedFile(path, sha, "", info.st_size, info.st_mtime_ns)


def hash_in_threads(workers: int) -> FileHasher:
    """A :data:`FileHasher` reading in a pool of ``workers`` threads (hashlib and file reads
    release the GIL), :data:`_CHUNK` files a task: a task per file would cost more in the
    pool than reading a small image."""
    def hash_files(paths: list[str]) -> list[HashedFile]:
        if not paths:
            return []
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return _map_in_chunks(pool, hash_file, paths)

    return hash_files


def _identify(candidates: list[_Candidate], stats: list[FileStat | str],
              listing: DataFolderListing | None, hash_state: HashState | None, rehash: bool,
              hash_files: FileHasher) -> tuple[dict[str, str], dict[str, str]]:
    """The sha256 of every regular candidate: from ``hash_state`` where it vouches for them
    (a folder listed as before at once, else file by file; never with ``rehash``), else read
    by ``hash_files``; what was read, and the folders now vouched for, are recorded in it.
    Returns ({path: sha256}, {path: why it could not be read})."""
    asked_state = None if rehash else hash_state
    known: dict[str, str] = {}
    # folders the state did not vouch for as a whole: recorded below where each file's
    # record will be trusted
    unvouched: dict[str, tuple[str, list[int]]] = {}
    if asked_state is not None and listing is not None:
        asked = _folders_asked(listing, candidates, stats)
        remembered = asked_state.known_folders({f: d for f, (d, _) in asked.items()})
        for folder, (digest, indexes) in asked.items():
            shas = remembered.get(folder)
            if shas is not None and len(shas) == len(indexes):
                known.update(zip((candidates[i].path for i in indexes), shas))
            else:
                unvouched[folder] = (digest, indexes)
    regular = [(item.path, info) for item, info in zip(candidates, stats)
               if isinstance(info, FileStat) and item.path not in known]
    vouched = asked_state.known(regular) if asked_state is not None else {}
    known.update(vouched)
    # only the files the state cannot vouch for are read
    unknown = {path: info for path, info in regular if path not in known}
    failed: dict[str, str] = {}
    fresh: list[tuple[str, FileStat, str, int]] = []  # what the state may record
    try:
        if unknown:
            # before any of them is read (here or on another machine): the racy-timestamp
            # rule counts from it, so an earlier moment only ever trusts less
            started = time.time_ns()
            for found in hash_files(list(unknown)):
                info = unknown.get(found.path)
                if info is None or found.path in known or found.path in failed:
                    continue  # not asked about, or answered already (a task run twice)
                if found.sha256 is None:
                    failed[found.path] = found.error
                    continue
                known[found.path] = found.sha256
                # the bytes hashed are those of the stat listed (another machine's mount,
                # a write in between): else the hash serves this run but is not recorded
                if (found.size, found.mtime_ns) == (info.size, info.mtime_ns):
                    fresh.append((found.path, info, found.sha256, started))
            for path in unknown:
                if path not in known and path not in failed:
                    failed[path] = "unreadable: no hash came back for it"
    finally:
        # what was hashed before an error or Ctrl-C is kept: each record stands alone
        if hash_state is not None:
            hash_state.record(fresh)
    if hash_state is not None:
        # what the state will trust next time: vouched for now, or just hashed, not racy
        trusted = {**vouched, **{path: sha for path, info, sha, started in fresh
                                 if not_racy(info, started)}}
        hash_state.record_folders(
            {folder: (digest, [(candidates[i].path, stats[i], trusted[candidates[i].path])
                               for i in indexes])
             for folder, (digest, indexes) in unvouched.items()
             if all(candidates[i].path in trusted for i in indexes)})
    return known, failed


def _folders_asked(listing: DataFolderListing, candidates: list[_Candidate],
                   stats: list[FileStat | str]) -> dict[str, tuple[str, list[int]]]:
    """The listing's folders holding candidates, each with its listing's digest
    (:meth:`DataFolderListing.folder_digest`) and its candidates' indexes, in order; a folder
    with a candidate that is not a regular file is left out (asked about file by file)."""
    starts = listing.folder_starts
    grouped: dict[int, list[int]] = defaultdict(list)
    for i, item in enumerate(candidates):
        if item.position >= 0:
            grouped[bisect_right(starts, item.position) - 1].append(i)
    asked = {}
    for index, indexes in grouped.items():
        if all(isinstance(stats[i], FileStat) for i in indexes):
            offsets = [candidates[i].position - starts[index] for i in indexes]
            asked[listing.folders[index][0]] = (listing.folder_digest(index, offsets), indexes)
    return asked


#: Files per task of the scan's thread pool.
_CHUNK = 256


def _map_in_chunks(pool: ThreadPoolExecutor, function, items: list) -> list:
    """``[function(item) for item in items]`` on ``pool``, ``_CHUNK`` items a task (the pool
    ignores ``map``'s chunksize), in order."""
    chunks = [items[i:i + _CHUNK] for i in range(0, len(items), _CHUNK)]
    return [result for chunk in pool.map(lambda part: [function(i) for i in part], chunks)
            for result in chunk]


class _Missing(str):
    """The reason ``identify`` gives for a listed file that does not exist: a class of its own,
    so that no other reason can be taken for it."""


_MISSING = _Missing("no such file")


def _candidates_from_folders(root: Path, listing: DataFolderListing,
                             folder_errors: list[OSError]
                             ) -> tuple[list[_Candidate], set[str], bool]:
    """The images of the folder layouts: (candidates, classes, whether there are split
    folders). Class folders the listing walked into are read from it; a symlinked one (the
    listing does not follow symlinked folders) is walked here."""
    top = _list_class_folders(root)
    names = [p.name for p in top]
    split_names = [n for n in names if n in SPLITS]
    if split_names and len(split_names) != len(names):
        others = sorted(set(names) - set(SPLITS))
        raise DataError(f"{root}: has split folders ({', '.join(split_names)}) and other folders "
                        f"({', '.join(others)}); use either <split>/<class>/ or <class>/ only")
    split_folders = bool(split_names)
    candidates: list[_Candidate] = []
    classes: set[str] = set()
    # (split or None, its class folders): the split folders', or the root's own
    groups = ([(d.name, _list_class_folders(d)) for d in top] if split_folders
              else [(None, top)])
    listed = _listed_images(listing, depth=2 if split_folders else 1)
    prefix = len(os.path.join(str(root), ""))  # root and its separator ("/" is one character)
    for split, class_dirs in groups:
        for class_dir in class_dirs:
            classes.add(class_dir.name)
            found = listed.get(str(class_dir))
            if found is None:  # not walked by the listing (a symlinked folder): walked here
                # (its files' stats are taken again by the scan: position -1; rare enough)
                own = list_data_folder(class_dir)
                found = _listed_images(own, depth=0).get(own.root, _ListedImages())
                found[:] = [(path, -1) for path, _ in found]  # positions of another listing
            folder_errors += found.errors
            label = class_dir.name
            candidates += [_Candidate(p, _relative(p[prefix:]), label, split, 0, position)
                           for p, position in found]
    if not classes:
        raise DataError(f"{root}: no class folders found; expected <class>/<image> or "
                        f"<split>/<class>/<image>")
    return candidates, classes, split_folders


def _relative(path: str) -> str:
    """``path`` (relative to the root) '/'-separated, as the view records it."""
    return path if os.sep == "/" else path.replace(os.sep, "/")


class _ListedImages(list):
    """(path, listing position) of a class folder's images, in the order of their path
    components, and the errors of the folders under it that could not be listed."""

    def __init__(self):
        super().__init__()
        self.errors: list[OSError] = []


def _listed_images(listing: DataFolderListing, depth: int) -> dict[str, _ListedImages]:
    """The image files of the listing by class folder (the folder ``depth`` levels below the
    root), leaving out hidden files and anything under a hidden folder, as the scan does."""
    root = listing.root
    prefix = len(os.path.join(root, ""))
    by_class: dict[str, _ListedImages] = {}

    def class_of(folder: str) -> str | None:
        parts = folder[prefix:].split(os.sep) if len(folder) > len(root) else []
        if len(parts) < depth or any(part.startswith(".") for part in parts):
            return None
        return os.path.join(root, *parts[:depth])

    position = 0
    nested: set[str] = set()  # class folders with subfolders: walk order is not path order
    for folder, names in listing.folders:
        class_dir = class_of(folder)
        if class_dir is not None:
            if class_dir in by_class:
                nested.add(class_dir)
            images = by_class.setdefault(class_dir, _ListedImages())
            head = os.path.join(folder, "")
            images += [(head + name, position + offset)
                       for offset, name in enumerate(names) if _is_image(name)]
        position += len(names)
    for class_dir in nested:
        by_class[class_dir].sort(key=lambda pair: pair[0].split(os.sep))
    for error in listing.errors:  # a class folder that could not be listed has these only
        class_dir = class_of(error.filename) if error.filename else None
        if class_dir is not None:
            by_class.setdefault(class_dir, _ListedImages()).errors.append(error)
    return by_class


def _table_path(cell: str) -> tuple[str, str | None]:
    """A labels table's path cell as a '/'-separated path relative to the root, or the kind of
    problem it has. Checked by its text alone, not on disk: '..' could otherwise climb out of
    the root through a symlinked folder, and the view's relative paths would be wrong."""
    if "\\" in cell:
        return "", "backslash"
    if cell.startswith("/"):
        return "", "outside"
    parts = [part for part in cell.split("/") if part not in ("", ".")]
    if ".." in parts:
        return "", "outside"
    if not parts:
        return "", "empty path"
    return "/".join(parts), None


#: The problems a labels table's rows can have, in the order an error lists them.
_ROW_PROBLEMS = {
    "cells": "more cells than the header has columns (quote a cell that holds a comma)",
    "empty path": "an empty path",
    "outside": "a path outside data.root (absolute, or with a '..' component)",
    "backslash": "a backslash in the path (paths are '/'-separated)",
    "empty label": "an empty label",
    "control": "a label with a control character (a line break, a tab, NUL)",
    "split": f"an unknown split (allowed: {', '.join(SPLITS)}, or blank for the hash split "
             f"of data.split)",
    "duplicate": "a path listed on an earlier row (a file has one row)",
}


def _rows_shown(rows: list[tuple[int, str]] | list[UnreadableFile]) -> str:
    """The first :data:`SHOWN_ROWS` of ``rows`` as 'line N path', and how many more."""
    pairs = [(row.line, display_path(row.relpath)) if isinstance(row, UnreadableFile) else row
             for row in rows]
    shown = ", ".join(f"line {line} {text}" for line, text in pairs[:SHOWN_ROWS])
    more = len(pairs) - SHOWN_ROWS
    return shown + (f" and {more} more" if more > 0 else "")


def _candidates_from_table(table: Path, root: Path, listing: DataFolderListing | None
                           ) -> tuple[list[_Candidate], set[str]]:
    """The rows of a labels table: (candidates in table order, classes). The header's
    problems, and then all the rows' problems, are one DataError each: a user fixes the table
    in one go rather than one error per run."""
    problems: dict[str, list[tuple[int, str]]] = defaultdict(list)
    bad_lines: set[int] = set()
    candidates: list[_Candidate] = []
    first_line: dict[str, int] = {}   # normalised path -> line of its row

    def problem(kind: str, line: int, text: str) -> None:
        problems[kind].append((line, text))
        bad_lines.add(line)

    try:
        raw = table.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {table}: {exc.strerror or exc}") from None
    try:
        # utf-8-sig: Excel starts its CSV files with a byte-order mark. Decoded at once, not
        # streamed, so that a bad byte's line is known exactly.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad_line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"{table} line {bad_line}: not UTF-8 text; "
                        f"save the table as UTF-8 (\"CSV UTF-8\" in spreadsheets)") from None
    del raw
    line = 0
    try:
        # newline="": the csv module handles line breaks, also inside quoted cells
        with io.StringIO(text, newline="") as fh:
            reader = csv.reader(fh)
            header, header_line = None, 0
            for cells in reader:
                if any(cell.strip() for cell in cells):
                    header, header_line = [cell.strip() for cell in cells], reader.line_num
                    while not header[-1]:  # a trailing comma, as rows may have too
                        header.pop()
                    break
            if header is None:
                raise DataError(f"{table}: no header row; the first line must name the columns "
                                f"{','.join(LABEL_COLUMNS)}[,{','.join(OPTIONAL_LABEL_COLUMNS)}]")
            index = _columns(table, header_line, header)
            line = reader.line_num
            for cells in reader:
                # a row starts on the line after the previous one ended (quoted cells may
                # span lines); rows of blank cells only, as spreadsheets leave, are skipped
                start, line = line + 1, reader.line_num
                cells = [cell.strip() for cell in cells]
                if not any(cells):
                    continue
                cells += [""] * (len(header) - len(cells))  # short rows: blank cells, as pandas
                cell, label = cells[index["path"]], cells[index["label"]]
                split = cells[index["split"]] if "split" in index else ""
                shown = display_path(cell) if cell else "(no path)"
                if any(cells[len(header):]):  # blank extra cells: a trailing comma, harmless
                    problem("cells", start, f"{shown} ({len(cells)} cells)")
                    continue
                relpath, kind = _table_path(cell)
                if kind:
                    problem(kind, start, shown)
                if not label:
                    problem("empty label", start, shown)
                elif any(ord(char) < 32 or ord(char) == 127 for char in label):
                    # a class name is a folder name and a line of every table and summary
                    problem("control", start, f"{shown}: {label!r}")
                if split and split not in SPLITS:
                    problem("split", start, f"{shown}: {split!r}")
                if kind:
                    continue
                if relpath in first_line:
                    problem("duplicate", start, f"{shown} (also line {first_line[relpath]})")
                    continue
                first_line[relpath] = start
                path = os.path.join(root, relpath)
                position = listing.position_of(path) if listing is not None else None
                candidates.append(_Candidate(path, relpath, label, split or None, start,
                                             -1 if position is None else position))
    except csv.Error as exc:
        raise DataError(f"{table} line {line + 1}: not a readable CSV table: {exc}") from None
    if problems:
        lines = [f"{len(problems[kind])} row(s) with {description}: "
                 f"{_rows_shown(problems[kind])}"
                 for kind, description in _ROW_PROBLEMS.items() if problems.get(kind)]
        raise DataError(f"{table}: {len(bad_lines)} row(s) cannot be used\n" + "\n".join(lines))
    if not candidates:
        raise DataError(f"{table}: no rows below the header; list one image a row "
                        f"(path,label[,split])")
    return candidates, {item.label for item in candidates}


def _columns(table: Path, line: int, header: list[str]) -> dict[str, int]:
    """Column name -> position, from a labels table's header row; a DataError naming every
    problem of the header."""
    allowed = LABEL_COLUMNS + OPTIONAL_LABEL_COLUMNS
    unknown = [name for name in header if name not in allowed]
    doubled = sorted({name for name in header if name in allowed and header.count(name) > 1})
    absent = [name for name in LABEL_COLUMNS if name not in header]
    problems = []
    if absent:
        problems.append(f"no {' or '.join(absent)} column")
    if unknown:
        def named(name: str) -> str:
            hint = (" (an empty column name)" if name == "" else
                    f" (did you mean {name.lower()}?)" if name.lower() in allowed else "")
            return repr(display_path(name)) + hint

        problems.append(f"unknown column(s) {', '.join(map(named, unknown))}")
    if doubled:
        problems.append(f"column(s) named twice: {', '.join(doubled)}")
    if problems:
        hint = (" (the first line must be the header row)" if absent == list(LABEL_COLUMNS)
                else "")
        if any(";" in name or "\t" in name for name in unknown):
            hint += " (cells are separated by commas, not ';' or tabs)"
        raise DataError(f"{table} line {line}: {'; '.join(problems)}{hint}; allowed columns: "
                        f"{', '.join(LABEL_COLUMNS)} (required), "
                        f"{', '.join(OPTIONAL_LABEL_COLUMNS)} (optional)")
    return {name: header.index(name) for name in header}


def find_duplicates(images: list[ImageRecord]) -> list[DuplicateGroup]:
    """Groups of files with identical bytes, in order of first appearance (empty files are
    not images, so they make no group)."""
    # counted first (in C): most images have no copy, and a list for each would cost more
    counts = Counter(image.sha256 for image in images)
    groups: dict[str, list[ImageRecord]] = {sha: [] for sha, n in counts.items() if n > 1}
    for image in images:
        group = groups.get(image.sha256)
        if group is not None:
            group.append(image)
    return [DuplicateGroup(sha256=sha, paths=tuple(i.relpath for i in group),
                           classes=tuple(i.label for i in group),
                           splits=tuple(i.split for i in group))
            for sha, group in groups.items() if group[0].size > 0]


def warn_about(scan: DatasetScan) -> None:
    """Emit the named warnings a user must see about this dataset."""
    if scan.missing:
        warnings.warn(f"{scan.labels}: {len(scan.missing)} listed file(s) do not exist under "
                      f"{scan.root} and are left out: {_rows_shown(scan.missing)}",
                      MissingImageWarning, stacklevel=2)
    for group in scan.duplicates:
        files = ", ".join(map(display_path, group.paths))
        if group.kind == "leakage":
            warnings.warn(f"the same image is in splits {', '.join(sorted(set(group.splits)))}: "
                          f"{files}", LeakageWarning, stacklevel=2)
        elif group.kind == "conflicting-labels":
            warnings.warn(f"the same image is under classes "
                          f"{', '.join(sorted(set(group.classes)))}: {files}",
                          DuplicateImageWarning, stacklevel=2)
    present = {image.label for image in scan.images}
    for label in scan.classes:
        if label not in present:
            warnings.warn(f"class {label!r} has no image files", EmptyClassWarning, stacklevel=2)
