"""The labelled image folder: find images, identify them by content, split them, find duplicates.

Two layouts are understood (the README's stages.yaml table, ``data.root``):

- ``root/<class>/<image>``: the split is decided per image by a seeded hash of its content, so a
  given image always lands in the same split, whatever else is added or removed;
- ``root/<split>/<class>/<image>`` with split folders named ``train``, ``validation``, ``test``.

Image files are those ending in .jpg, .jpeg, .png, .bmp or .gif (any case); class folders are
searched recursively without following symlinked folders (so a symlink loop cannot trap the
scan). Everything is listed in sorted order, so the result does not depend on the filesystem.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cache.files import sha256_file, sha256_text

from ..config import SPLITS, DataConfig
from ..errors import DataError, DuplicateImageWarning, EmptyClassWarning, LeakageWarning
from .names import display_path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


@dataclass(frozen=True)
class ImageRecord:
    """One image file of the dataset."""

    path: Path        # absolute path
    relpath: str      # path relative to the data root, '/'-separated
    label: str        # class folder name
    split: str        # train | validation | test
    sha256: str       # hex sha256 of the file's bytes
    size: int         # bytes


@dataclass(frozen=True)
class UnreadableFile:
    """A file that looked like an image but could not even be read."""

    relpath: str
    reason: str


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
    draw = bytes.fromhex(sha256_text(f"split:{seed}:{sha256}"))
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


def _list_images(class_dir: Path, errors: list[OSError]) -> list[Path]:
    found = []
    for top, dirs, files in os.walk(class_dir, followlinks=False, onerror=errors.append):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(top) / f for f in files if _is_image(f))
    return sorted(found)


def _relpath(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def scan_dataset(data: DataConfig, hash_workers: int = 4) -> DatasetScan:
    """Find, hash and split every image under ``data.root``; report duplicates and leakage.

    Raises :class:`DataError` when the folder has no class folders or mixes split folders with
    class folders. Unreadable files are listed in ``unreadable``, not raised.
    """
    root = data.root
    top = _list_class_folders(root)
    names = [p.name for p in top]
    split_names = [n for n in names if n in SPLITS]
    if split_names and len(split_names) != len(names):
        others = sorted(set(names) - set(SPLITS))
        raise DataError(f"{root}: has split folders ({', '.join(split_names)}) and other folders "
                        f"({', '.join(others)}); use either <split>/<class>/ or <class>/ only")
    split_folders = bool(split_names)
    candidates: list[tuple[Path, str, str | None]] = []  # (path, label, split or None)
    folder_errors: list[OSError] = []  # folders os.walk could not list
    classes: set[str] = set()
    if split_folders:
        for split_dir in top:
            for class_dir in _list_class_folders(split_dir):
                classes.add(class_dir.name)
                candidates += [(p, class_dir.name, split_dir.name)
                               for p in _list_images(class_dir, folder_errors)]
    else:
        for class_dir in top:
            classes.add(class_dir.name)
            candidates += [(p, class_dir.name, None)
                           for p in _list_images(class_dir, folder_errors)]
    if not classes:
        raise DataError(f"{root}: no class folders found; expected <class>/<image> or "
                        f"<split>/<class>/<image>")

    def identify(item: tuple[Path, str, str | None]):
        path = item[0]
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):
                # a named pipe or device would block the read forever or never end
                return None, 0, "not a regular file"
            return sha256_file(path), info.st_size, None
        except OSError as exc:
            return None, 0, f"unreadable: {exc.strerror or type(exc).__name__}"

    with ThreadPoolExecutor(max_workers=hash_workers) as pool:
        hashed = list(pool.map(identify, candidates))

    fractions = (data.split.train, data.split.validation, data.split.test)
    images, unreadable = [], []
    for (path, label, split), (sha, size, error) in zip(candidates, hashed):
        rel = _relpath(path, root)
        if sha is None:
            unreadable.append(UnreadableFile(rel, error))
            continue
        images.append(ImageRecord(path=path, relpath=rel, label=label,
                                  split=split or split_for(sha, fractions, data.split.seed),
                                  sha256=sha, size=size))
    for error in folder_errors:
        folder = Path(error.filename) if error.filename else root
        unreadable.append(UnreadableFile(_relpath(folder, root) + "/",
                                         f"unreadable folder: {error.strerror}"))
    scan = DatasetScan(root=root, classes=sorted(classes), images=images,
                       split_folders=split_folders, unreadable=unreadable)
    scan.duplicates = find_duplicates(images)
    return scan


def find_duplicates(images: list[ImageRecord]) -> list[DuplicateGroup]:
    """Groups of files with identical bytes, in order of first appearance (empty files are
    not images, so they make no group)."""
    groups: dict[str, list[ImageRecord]] = defaultdict(list)
    for image in images:
        groups[image.sha256].append(image)
    return [DuplicateGroup(sha256=sha, paths=tuple(i.relpath for i in group),
                           classes=tuple(i.label for i in group),
                           splits=tuple(i.split for i in group))
            for sha, group in groups.items() if len(group) > 1 and group[0].size > 0]


def warn_about(scan: DatasetScan) -> None:
    """Emit the named warnings a user must see about this dataset."""
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
