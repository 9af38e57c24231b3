"""The dataset view: which cached images make up an experiment, with their class and split.

The cache holds features by content; labels and paths belong here, because the same image can
sit in two experiments with different labels or splits. The extract stage writes one view per
(data root, split settings, labels table) into the fingerprint's cache folder,
``<store>/views/<id>.json``, so later stages find the images they train on, and cache
maintenance knows which entries are still referenced. Human-readable CSV copies go into the
run folder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from cache.files import replacing, sha256_text, write_atomic

from ..config import OUTPUT, SPLITS, PipelineConfig
from ..errors import PipelineError
from ..json_values import canonical_json, json_digest
from .scan import DuplicateGroup
from .table import ImageTable, ViewImage

VIEW_FORMAT = 1
# images serialised at a time when a view is written
_ROWS_WRITTEN = 4096


@dataclass(frozen=True)
class SkippedFile:
    """An image file left out of the view, and why."""

    path: str
    sha256: str   # "" when the file could not be read at all
    reason: str


@dataclass(frozen=True)
class AugmentedCopiesSpec:
    """``count`` cached augmented copies of every training image, made with the transforms
    that ``id`` identifies (see :func:`pipeline.extract.augmented.augmentation_id`)."""

    id: str
    count: int


class AugmentedCopy(NamedTuple):
    """One cached augmented copy: its cache key, the image it was made from, its number."""

    key: str
    image: ViewImage
    number: int


@dataclass
class DatasetView:
    """Images with cached features, their classes and splits, and what was left out."""

    root: str
    classes: list[str]
    fingerprint: str
    # a list of ViewImage given here is made into a table
    images: ImageTable
    skipped: list[SkippedFile] = field(default_factory=list)
    duplicates: list[DuplicateGroup] = field(default_factory=list)
    split_folders: bool = False
    created: str = ""
    augmented: AugmentedCopiesSpec | None = None
    # the taps extract cached for these images, by name: the fingerprint of each tap's store
    taps: dict[str, str] = field(default_factory=dict)
    # whether the output tensor is cached too (backbone.keep_output), in the store of
    # ``fingerprint``, which holds the view either way
    keep_output: bool = True
    # the labels table (data.labels) the labels and splits come from; "": the folder layout
    labels: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.images, ImageTable):
            self.images = ImageTable.from_rows(self.classes, self.images)
        elif self.images.classes != tuple(self.classes):
            raise ValueError("the image table's classes are not the view's")

    def select(self, split: str) -> ImageTable:
        """Images of one split, in view order."""
        return self.images.in_split(split)

    def augmented_copies(self, split: str = "train") -> list[AugmentedCopy]:
        """Every augmented copy of ``split``'s images that extract cached (none unless
        ``stages.extract.augmented_copies.count`` > 0; only the train split has them)."""
        if self.augmented is None or split != "train":
            return []
        return [AugmentedCopy(augmented_key(image.sha256, self.augmented.id, k), image, k)
                for image in self.select(split) for k in range(self.augmented.count)]

    def label_index(self, label: str) -> int:
        """Position of ``label`` in ``classes`` (the class index heads predict)."""
        return self.classes.index(label)

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: number of images}}."""
        counts = self.images.counts().tolist()
        return {split: dict(zip(self.classes, row)) for split, row in zip(SPLITS, counts)}

    def check_trainable(self, selected_on: str) -> None:
        """:class:`PipelineError` unless the view has 2+ classes and non-empty train and
        validation splits; ``selected_on`` says what validation is for, in the message."""
        # where the classes and splits came from, for the messages
        classes, splits = (("labels", f"the split column of {self.labels}") if self.labels
                           else ("class folders", "the split folders"))
        if len(self.classes) < 2:
            raise PipelineError(f"the dataset view has {len(self.classes)} class(es); a "
                                f"classifier needs at least 2 {classes}")
        for split in ("train", "validation"):
            if not self.select(split):
                raise PipelineError(f"the {split} split has no images; {selected_on} (check "
                                    f"data.split or {splits})")

    def stores(self) -> dict[str, str]:
        """The fingerprint of the store of each part cached for the view's images."""
        return {**({OUTPUT: self.fingerprint} if self.keep_output else {}), **self.taps}

    def to_json(self, images: bool = True) -> dict:
        """Plain data for ``json.dump`` (without taps, as views were before them, when none
        are cached, and without labels for the folder layouts); ``images=False``: with an
        empty list of images."""
        payload = {"root": self.root, "classes": list(self.classes),
                   "fingerprint": self.fingerprint,
                   "images": [image._asdict() for image in self.images] if images else [],
                   "skipped": [item.__dict__ for item in self.skipped],
                   "duplicates": [group.to_json() for group in self.duplicates],
                   "split_folders": self.split_folders, "created": self.created,
                   "augmented": {} if self.augmented is None else
                   {"id": self.augmented.id, "count": self.augmented.count}}
        if self.taps or not self.keep_output:
            payload.update(taps=dict(self.taps), keep_output=self.keep_output)
        if self.labels:  # only then, so views of the folder layouts keep their content hash
            payload["labels"] = self.labels
        return {**payload, "format": VIEW_FORMAT}

    @classmethod
    def from_json(cls, payload: dict) -> DatasetView:
        """Inverse of :meth:`to_json`."""
        augmented = payload.get("augmented") or None
        classes, images = list(payload["classes"]), payload["images"]
        return cls(root=payload["root"], classes=classes,
                   fingerprint=payload["fingerprint"],
                   images=ImageTable.from_columns(
                       classes, (image["path"] for image in images),
                       (image["label"] for image in images), (image["split"] for image in images),
                       (image["sha256"] for image in images)),
                   skipped=[SkippedFile(**s) for s in payload.get("skipped", [])],
                   duplicates=[DuplicateGroup.from_json(g)
                               for g in payload.get("duplicates", [])],
                   split_folders=bool(payload.get("split_folders", False)),
                   created=payload.get("created", ""),
                   augmented=None if augmented is None else
                   AugmentedCopiesSpec(id=augmented["id"], count=int(augmented["count"])),
                   taps=dict(payload.get("taps", {})),
                   keep_output=bool(payload.get("keep_output", True)),
                   labels=payload.get("labels", ""))


def augmented_key(image_sha256: str, augmentation_id: str, number: int) -> str:
    """The cache key of augmented copy ``number`` of an image: 64 hex digits like a content
    hash, derived from the image's hash, the transforms and seed, and the copy number. (The
    hashed text is that of earlier releases, byte for byte: cached copies keep their keys.)"""
    return sha256_text(f"augmented|{augmentation_id}|{image_sha256}|{number}")


def view_id(config: PipelineConfig) -> str:
    """Identifies a view by what decides its contents: data root, split settings and the
    labels table, when there is one (named by its path: an edited table rewrites the same
    view). The text hashed for the folder layouts is that of earlier releases, byte for
    byte, so their views keep their ids."""
    data = config.data
    split = data.split
    text = f"{data.root}|{split.train}|{split.validation}|{split.test}|{split.seed}"
    if data.labels is not None:
        text += f"|labels={data.labels}"
    return sha256_text(text)[:16]


def _content_digest(payload: dict) -> str:
    """The identity of a view's content: the sha256 of its JSON with sorted keys and without
    its write time (the value locks written by earlier releases recorded)."""
    return json_digest({key: value for key, value in payload.items() if key != "created"})


def digest_file(path: Path) -> Path:
    """Where the digest of the view at ``path`` is kept: ``<id>.digest`` beside it."""
    return path.with_suffix(".digest")


def _images_json(images: ImageTable) -> Iterator[str]:
    """The canonical JSON of ``images``' list, ``_ROWS_WRITTEN`` objects a piece: a view's
    images are never all Python objects at once."""
    yield "["
    for start in range(0, len(images), _ROWS_WRITTEN):
        text = canonical_json([image._asdict()
                               for image in images.rows(start, start + _ROWS_WRITTEN)])
        yield (", " if start else "") + text[1:-1]
    yield "]"


def write_view(view: DatasetView, path: Path) -> None:
    """Write ``view`` to ``path`` atomically, stamped with the time of writing, and its
    content digest beside it (computed here, once, so that no reader parses the view to learn
    its identity). The old digest goes first: a crash in between leaves no digest, which
    readers then compute, never a digest of other content.

    The view is serialised once, its images a chunk at a time: the file is the digest's
    canonical text (sorted keys, no write time) with the write time appended as its last
    key."""
    view.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = view.to_json(images=False)
    created = payload.pop("created")
    # every key and string is escaped (ensure_ascii, which also keeps file names that are
    # not valid UTF-8 writable), so the empty list's text occurs once, where the images go
    head, tail = canonical_json(payload).split('"images": []')
    digest = hashlib.sha256()
    digest_file(path).unlink(missing_ok=True)
    with replacing(path) as temporary, open(temporary, "w", encoding="ascii") as out:
        for text in (head + '"images": ', *_images_json(view.images), tail[:-1]):
            out.write(text)
            digest.update(text.encode("ascii"))
        digest.update(b"}")
        out.write(f", \"created\": {json.dumps(created)}}}")
    write_atomic(digest_file(path), digest.hexdigest() + "\n")


def view_digest(path: Path) -> str | None:
    """The content digest of the view at ``path`` (None when there is no view): read from its
    digest file, or, for a view written without one, computed from the view."""
    try:
        recorded = digest_file(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        recorded = ""
    if len(recorded) == 64 and path.is_file():
        return recorded
    try:
        return _content_digest(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def read_view(path: Path) -> DatasetView:
    """Read a view written by :func:`write_view`."""
    return DatasetView.from_json(json.loads(path.read_text(encoding="utf-8")))


def _write_csv(path: Path, header: list[str], rows) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue(), errors="backslashreplace")


def write_view_csv(view: DatasetView, path: Path) -> None:
    """``path,class,split,sha256`` per image, for people and spreadsheets."""
    # a ViewImage is the row: (path, label, split, sha256)
    _write_csv(path, ["path", "class", "split", "sha256"], view.images)


def write_skipped_csv(skipped: list[SkippedFile], path: Path) -> None:
    """``path,sha256,reason`` per skipped file."""
    _write_csv(path, ["path", "sha256", "reason"],
               ([item.path, item.sha256, item.reason] for item in skipped))


def write_duplicates_csv(view: DatasetView, path: Path) -> None:
    """``kind,sha256,paths,classes,splits`` per group of identical files ('|'-joined lists).

    kind is ``leakage`` (two splits), ``conflicting-labels`` (two classes) or ``copy``.
    """
    _write_csv(path, ["kind", "sha256", "paths", "classes", "splits"],
               ([g.kind, g.sha256, "|".join(g.paths), "|".join(g.classes), "|".join(g.splits)]
                for g in view.duplicates))
