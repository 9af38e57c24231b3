"""The dataset view: which cached images make up an experiment, with their class and split.

The cache holds features by content; labels and paths belong here, because the same image can
sit in two experiments with different labels or splits. The extract stage writes one view per
(data root, split settings) into the fingerprint's cache folder, ``<store>/views/<id>.json``,
so later stages find the images they train on, and cache maintenance knows which entries are
still referenced. A human-readable ``dataset.csv`` copy goes into the run folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cache import FeatureStore

from .config import SPLITS, PipelineConfig

VIEW_FORMAT = 1


@dataclass(frozen=True)
class ViewImage:
    """An image with cached features."""

    path: str     # relative to the view's root, '/'-separated
    label: str
    split: str
    sha256: str


@dataclass(frozen=True)
class SkippedFile:
    """An image file left out of the view, and why."""

    path: str
    sha256: str   # "" when the file could not be read at all
    reason: str


@dataclass
class DatasetView:
    """Images with cached features, their classes and splits, and what was left out."""

    root: str
    classes: list[str]
    fingerprint: str
    images: list[ViewImage]
    skipped: list[SkippedFile] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    split_folders: bool = False
    created: str = ""
    # {"id": augmentation id, "count": K}: K cached augmented views of every training image
    augmented: dict = field(default_factory=dict)

    def select(self, split: str) -> list[ViewImage]:
        """Images of one split, in view order."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return [image for image in self.images if image.split == split]

    def augmented_views(self, split: str = "train") -> list[tuple[str, ViewImage, int]]:
        """``(cache key, image, view number)`` of every augmented view of ``split``'s images
        that extract cached (none unless ``stages.extract.augmented_views.count`` > 0)."""
        if not self.augmented or split != "train":
            return []
        return [(augmented_key(image.sha256, self.augmented["id"], k), image, k)
                for image in self.select(split) for k in range(self.augmented["count"])]

    def label_index(self, label: str) -> int:
        """Position of ``label`` in ``classes`` (the class index heads predict)."""
        return self.classes.index(label)

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: number of images}}."""
        table = {s: {c: 0 for c in self.classes} for s in SPLITS}
        for image in self.images:
            table[image.split][image.label] += 1
        return table

    def to_json(self) -> dict:
        """Plain data for ``json.dump``."""
        payload = asdict(self)
        payload["format"] = VIEW_FORMAT
        return payload

    @classmethod
    def from_json(cls, payload: dict) -> DatasetView:
        """Inverse of :meth:`to_json`."""
        return cls(root=payload["root"], classes=list(payload["classes"]),
                   fingerprint=payload["fingerprint"],
                   images=[ViewImage(**i) for i in payload["images"]],
                   skipped=[SkippedFile(**s) for s in payload.get("skipped", [])],
                   duplicates=list(payload.get("duplicates", [])),
                   split_folders=bool(payload.get("split_folders", False)),
                   created=payload.get("created", ""),
                   augmented=dict(payload.get("augmented", {})))


def augmented_key(image_sha256: str, augmentation_id: str, view: int) -> str:
    """The cache key of augmented view ``view`` of an image: 64 hex digits like a content
    hash, derived from the image's hash, the transforms and seed, and the view number."""
    text = f"augmented|{augmentation_id}|{image_sha256}|{view}"
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def view_id(config: PipelineConfig) -> str:
    """Identifies a view by what decides its contents: data root and split settings."""
    split = config.data.split
    key = f"{config.data.root}|{split.train}|{split.validation}|{split.test}|{split.seed}"
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def view_path(config: PipelineConfig, store: FeatureStore) -> Path:
    """Where the view of ``config`` lives inside ``store``."""
    return store.views_dir() / f"{view_id(config)}.json"


def write_view(view: DatasetView, path: Path) -> None:
    """Write ``view`` to ``path`` atomically (temporary file, fsync, rename)."""
    view.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "w", encoding="utf-8") as fh:
        # ensure_ascii keeps file names that are not valid UTF-8 (surrogate escapes) writable
        json.dump(view.to_json(), fh, ensure_ascii=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temp, path)


def read_view(path: Path) -> DatasetView:
    """Read a view written by :func:`write_view`."""
    return DatasetView.from_json(json.loads(path.read_text(encoding="utf-8")))


def write_view_csv(view: DatasetView, path: Path) -> None:
    """``path,class,split,sha256`` per image, for people and spreadsheets."""
    with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "class", "split", "sha256"])
        for image in view.images:
            writer.writerow([image.path, image.label, image.split, image.sha256])


def write_skipped_csv(skipped: list[SkippedFile], path: Path) -> None:
    """``path,sha256,reason`` per skipped file."""
    with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "sha256", "reason"])
        for item in skipped:
            writer.writerow([item.path, item.sha256, item.reason])


def write_duplicates_csv(view: DatasetView, path: Path) -> None:
    """``kind,sha256,paths,classes,splits`` per group of identical files ('|'-joined lists).

    kind is ``leakage`` (two splits), ``conflicting-labels`` (two classes) or ``copy``.
    """
    with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as fh:
        writer = csv.writer(fh)
        writer.writerow(["kind", "sha256", "paths", "classes", "splits"])
        for group in view.duplicates:
            writer.writerow([group["kind"], group["sha256"], "|".join(group["paths"]),
                             "|".join(group["classes"]), "|".join(group["splits"])])
