"""The images of a dataset, as columns: a few numpy arrays, whatever their number."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np

from ..config import SPLITS
from .columns import PackedStrings


class ViewImage(NamedTuple):
    """An image with cached features, as :class:`ImageTable` hands them out one at a time."""

    path: str     # relative to the view's root, '/'-separated
    label: str
    split: str
    sha256: str


# rows decoded at a time when a table is iterated
_ROWS_DECODED = 4096


class ImageTable:
    """The images of a dataset view, column by column: a few numpy arrays whatever their
    number (~95 bytes an image), where a list of :class:`ViewImage` held ~380 bytes of Python
    objects an image (365 MiB at 10^6 images: ``bench.view_memory``). It is also a sequence
    of :class:`ViewImage`: ``len``, iteration and ``table[i]`` give them one at a time;
    ``table[mask or positions or slice]`` is another table.

    Columns, N images:

    - ``path``: :class:`~pipeline.data.columns.PackedStrings`, relative to the view's root;
    - ``label``: (N,) int32, the class index into ``classes`` (what heads predict);
    - ``split``: (N,) int8, the index into ``pipeline.config.SPLITS`` (train, validation,
      test);
    - ``sha256``: (N,) ``S64``, the hex sha256 of the file's content (the cache key).
    """

    __slots__ = ("classes", "path", "label", "split", "sha256")

    def __init__(self, classes: Sequence[str], path: PackedStrings, label: np.ndarray,
                 split: np.ndarray, sha256: np.ndarray):
        if not len(path) == len(label) == len(split) == len(sha256):
            raise ValueError("the columns of an image table must have one length")
        self.classes = tuple(classes)
        self.path, self.label, self.split, self.sha256 = path, label, split, sha256

    @classmethod
    def from_columns(cls, classes: Sequence[str], paths: Iterable[str],
                     labels: Iterable[str], splits: Iterable[str],
                     sha256: Iterable[str]) -> ImageTable:
        """A table of the images whose path, label, split and sha256 (64 hex digits: the
        column holds 64 bytes) the four iterables give, position by position. ValueError for
        a label not in ``classes`` or an unknown split."""
        label_codes = {label: code for code, label in enumerate(classes)}
        split_codes = {split: code for code, split in enumerate(SPLITS)}
        try:
            label = np.fromiter((label_codes[x] for x in labels), np.int32)
        except KeyError as exc:
            raise ValueError(f"label {exc.args[0]!r} is not one of the classes") from None
        try:
            split = np.fromiter((split_codes[x] for x in splits), np.int8)
        except KeyError as exc:
            raise ValueError(f"unknown split {exc.args[0]!r}; expected one of "
                             f"{', '.join(SPLITS)}") from None
        return cls(classes, PackedStrings.of(paths), label, split,
                   np.array(list(sha256), dtype="S64").reshape(-1))

    @classmethod
    def from_rows(cls, classes: Sequence[str], rows: Iterable[Sequence[str]]) -> ImageTable:
        """A table of ``(path, label, split, sha256)`` rows (:class:`ViewImage` s, say)."""
        rows = list(rows)
        return cls.from_columns(classes, (r[0] for r in rows), (r[1] for r in rows),
                                (r[2] for r in rows), (r[3] for r in rows))

    def __len__(self) -> int:
        return len(self.label)

    def __iter__(self) -> Iterator[ViewImage]:
        for start in range(0, len(self), _ROWS_DECODED):
            yield from self.rows(start, start + _ROWS_DECODED)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            position = int(index) + len(self) if index < 0 else int(index)
            if not 0 <= position < len(self):
                raise IndexError(f"image {index} of {len(self)}")
            return self.rows(position, position + 1)[0]
        if isinstance(index, np.ndarray) and index.dtype == bool:
            if len(index) != len(self):
                raise IndexError(f"a mask of {len(index)} for {len(self)} images")
            path = self.path.compress(index)
        else:
            index = np.arange(len(self))[index]
            path = self.path.take(index)
        return ImageTable(self.classes, path, self.label[index], self.split[index],
                          self.sha256[index])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageTable):
            return NotImplemented
        return (self.classes == other.classes and self.path == other.path
                and all(np.array_equal(getattr(self, name), getattr(other, name))
                        for name in ("label", "split", "sha256")))

    def __repr__(self) -> str:
        return f"ImageTable({len(self)} images, {len(self.classes)} classes)"

    def rows(self, start: int, stop: int) -> list[ViewImage]:
        """Images ``start:stop`` as :class:`ViewImage` s."""
        classes = self.classes
        return [ViewImage(path, classes[label], SPLITS[split], sha.decode("ascii"))
                for path, label, split, sha in zip(
                    self.path.tolist(start, stop), self.label[start:stop].tolist(),
                    self.split[start:stop].tolist(), self.sha256[start:stop].tolist())]

    def keys(self) -> list[str]:
        """The sha256 of every image, in table order (the cache keys, as the cache's API
        takes them)."""
        return [key.decode("ascii") for key in self.sha256.tolist()]

    def label_names(self) -> list[str]:
        """The class name of every image, in table order."""
        return [self.classes[code] for code in self.label.tolist()]

    def split_names(self) -> list[str]:
        """The split of every image, in table order."""
        return [SPLITS[code] for code in self.split.tolist()]

    def in_split(self, split: str) -> ImageTable:
        """The images of one split, in table order."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return self[self.split == SPLITS.index(split)]

    def counts(self) -> np.ndarray:
        """(3, C) int64: images per split (SPLITS order) and class (``classes`` order)."""
        return np.bincount(self.split.astype(np.int64) * len(self.classes) + self.label,
                           minlength=len(SPLITS) * len(self.classes)
                           ).reshape(len(SPLITS), len(self.classes))
