"""``pipeline export``: a split's cached features as a file other tools read, written a chunk of
rows at a time so that an export larger than memory works.

The format follows the file's suffix:

- ``.parquet`` (pyarrow): columns ``path``, ``sha256``, ``label`` (strings), ``label_index``
  (int64) and ``features``, a fixed-size list of d float32 per row: one row group per chunk.
- ``.npz`` (numpy): arrays ``features`` (N, d) float32, ``label_index`` (N,) int64, and
  ``path``, ``sha256``, ``label`` (N,) unicode, plus ``classes`` (the label of each index);
  ``np.load`` reads it, ``mmap_mode`` aside. Each member is streamed into the zip.

Rows follow the dataset view's order for the split (:meth:`pipeline.project.Project.dataset`);
the features are the parts a head reads (:class:`~pipeline.heads.features.FeatureRows`). The
file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from cache.files import replacing

from .context import RunContext
from .data.table import ImageTable
from .data.view import DatasetView
from .errors import PipelineError
from .heads.features import FeatureRows, source_of

#: The suffixes ``pipeline export`` writes, and what each is.
FORMATS = {".parquet": "Apache Parquet (pyarrow)", ".npz": "numpy .npz"}
#: Rows read and written at a time (memory, not maths).
CHUNK_ROWS = 4096


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the file, its rows and the width of a feature row."""

    path: Path
    rows: int
    width: int
    parts: tuple[str, ...]

    def summary(self) -> str:
        """One line for the terminal."""
        return (f"export: {self.rows} rows x {self.width} features "
                f"({', '.join(self.parts)}) -> {self.path}")


@dataclass(frozen=True)
class SplitRows:
    """A chunk of one split's rows: image paths, sha256, labels, class indices (n,) int64 and
    features (n, d) float32."""

    paths: list[str]
    sha256: list[str]
    labels: list[str]
    label_index: np.ndarray
    features: np.ndarray


@dataclass(frozen=True)
class SplitReader:
    """The rows of one split as heads read them (``parts`` normalised by ``normalize``,
    concatenated), in the dataset view's order, read from the cache a chunk at a time.

    Make one with :meth:`of`, which checks the split and that the cache holds the parts.
    """

    ctx: RunContext
    split: str
    parts: tuple[str, ...]
    normalize: str = "none"

    @classmethod
    def of(cls, ctx: RunContext, split: str, parts: str | Sequence[str] | None = None,
           normalize: str = "none") -> SplitReader:
        """The reader of ``split``; ``parts`` default to every tap of ``backbone.taps``, or
        ``flatten`` when there is none. :class:`~pipeline.errors.MissingViewError` when the
        cache lacks them, ValueError for an unknown split or normalisation."""
        if isinstance(parts, str):
            parts = [parts]
        reader = cls(ctx, split, tuple(parts or ctx.config.backbone.taps or ("flatten",)),
                     normalize)
        reader.view.select(split)  # an unknown split is an error here, not mid-file
        reader.to_rows.transform({source: np.ones((1, *ctx.stores[source].feature_shape),
                                                  np.float32) for source in reader.sources})
        return reader

    @property
    def sources(self) -> tuple[str, ...]:
        """The cached sources the parts read."""
        return tuple(dict.fromkeys(source_of(part) for part in self.parts))

    @cached_property
    def view(self) -> DatasetView:
        """The dataset view, every source's features checked to be cached."""
        return self.ctx.require_view(self.sources)

    @cached_property
    def to_rows(self) -> FeatureRows:
        """The parts -> rows transform a head uses."""
        return FeatureRows(list(self.parts), self.normalize)

    @property
    def images(self) -> ImageTable:
        """The split's images, in view order."""
        return self.view.select(self.split)

    @property
    def width(self) -> int:
        """The length d of one row, from the stores' shapes (no row is read)."""
        one = {source: np.zeros((1, *self.ctx.stores[source].feature_shape), np.float32)
               for source in self.sources}
        return self.to_rows.transform(one).shape[1]

    def chunks(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[SplitRows]:
        """The split's rows, ``chunk_rows`` at a time (one read per source per chunk)."""
        images = self.images
        for start in range(0, len(images), chunk_rows):
            batch = images[start:start + chunk_rows]
            keys = batch.keys()
            x = {source: self.ctx.stores[source].get(keys) for source in self.sources}
            yield SplitRows(batch.path.tolist(), keys, batch.label_names(),
                            batch.label.astype(np.int64),
                            self.to_rows.transform(x).astype(np.float32, copy=False))

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """Every row at once: ``(X (N, d) float32, y (N,) int64)``."""
        chunks = list(self.chunks())
        if not chunks:
            return np.empty((0, self.width), np.float32), np.empty(0, np.int64)
        return (np.concatenate([chunk.features for chunk in chunks]),
                np.concatenate([chunk.label_index for chunk in chunks]))


def export_features(ctx: RunContext, split: str, output: Path,
                    parts: str | Sequence[str] | None = None, normalize: str = "none",
                    chunk_rows: int = CHUNK_ROWS) -> ExportResult:
    """Write the rows of ``split`` (:class:`SplitReader`) to ``output``, the format from its
    suffix; :class:`~pipeline.errors.PipelineError` for an unknown suffix, before anything is
    read or written."""
    suffix = output.suffix.lower()
    if suffix not in FORMATS:
        raise PipelineError(f"{output}: cannot tell the format from the suffix; use "
                            f"{' or '.join(FORMATS)}")
    reader = SplitReader.of(ctx, split, parts, normalize)
    rows, width = len(reader.images), reader.width
    output.parent.mkdir(parents=True, exist_ok=True)
    with replacing(output, keep_suffix=True) as temporary:
        if suffix == ".parquet":
            _write_parquet(temporary, reader.chunks(chunk_rows), width)
        else:
            _write_npz(temporary, reader.chunks(chunk_rows), rows, width, reader.view.classes)
    return ExportResult(output, rows, width, reader.parts)


def _write_parquet(path: Path, chunks: Iterator[SplitRows], width: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("path", pa.string()), ("sha256", pa.string()),
                        ("label", pa.string()), ("label_index", pa.int64()),
                        ("features", pa.list_(pa.float32(), width))])
    with pq.ParquetWriter(path, schema) as writer:
        for chunk in chunks:
            values = pa.array(chunk.features.reshape(-1), pa.float32())
            writer.write_table(pa.table({
                "path": chunk.paths, "sha256": chunk.sha256, "label": chunk.labels,
                "label_index": chunk.label_index,
                "features": pa.FixedSizeListArray.from_arrays(values, width)}, schema=schema))


def _write_npz(path: Path, chunks: Iterator[SplitRows], rows: int, width: int,
               classes: list[str]) -> None:
    """Each array a .npy member of the zip, written as the chunks come: the strings are
    small and kept until the end, the features go straight to the file."""
    paths: list[str] = []
    shas: list[str] = []
    labels: list[str] = []
    indices: list[np.ndarray] = []
    with zipfile.ZipFile(path, "w", allowZip64=True) as archive:
        with archive.open("features.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_2_0(member, {
                "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                "fortran_order": False, "shape": (rows, width)})
            for chunk in chunks:
                member.write(np.ascontiguousarray(chunk.features, np.float32).tobytes())
                paths += chunk.paths
                shas += chunk.sha256
                labels += chunk.labels
                indices.append(chunk.label_index)
        small = {"label_index": np.concatenate(indices) if indices else np.empty(0, np.int64),
                 "path": np.array(paths, dtype=str), "sha256": np.array(shas, dtype=str),
                 "label": np.array(labels, dtype=str), "classes": np.array(classes, dtype=str)}
        for name, array in small.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
