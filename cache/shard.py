"""One HDF5 shard: an immutable block of feature rows, written once under a temporary name.

Layout of a shard file (``shard-<seq>-<id>.h5``):

- ``features``: (N, h, w, c) float32 or float16 (the store's storage dtype), one row per image
- ``sha256``:   (N,) ``S64``, the hex sha256 of each image's bytes, row-aligned with ``features``
- attributes: ``fingerprint`` (the backbone fingerprint id), ``format`` (shard format version),
  ``created`` (UTC ISO time)

A shard is written to ``.<name>.<random>.tmp`` (a name no other process uses, even one writing
the same shard), flushed and fsynced, then renamed to its final name, so a file ending in
``.h5`` is always complete. The temporary name ends in ``.tmp``: only shards end in
``.h5`` under the cache folder.
"""

from __future__ import annotations

import os
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from .errors import CacheError
from .faults import fault_point
from .files import replacing

SHARD_FORMAT = 1
SHARD_SUFFIX = ".h5"
#: The dtypes a shard may store its features in; rows are float32 everywhere else.
STORAGE_DTYPES = ("float32", "float16")


def checked_storage_dtype(dtype: str) -> str:
    """``dtype`` if a shard can store it (:data:`STORAGE_DTYPES`), else :class:`CacheError`
    (a store whose fingerprint.json names another was not written by this release)."""
    if dtype not in STORAGE_DTYPES:
        raise CacheError(f"storage dtype {dtype!r}: shards store "
                         f"{' or '.join(STORAGE_DTYPES)}")
    return dtype


@dataclass(frozen=True)
class WrittenShard:
    """What the manifest records about a shard once it has its final name."""

    name: str
    sha256: list[str]
    checksums: list[int]
    bytes: int


@dataclass(frozen=True)
class ShardContents:
    """Everything one shard file holds: its rows, their keys and its fingerprint attribute."""

    fingerprint: str | None
    sha256: list[str]
    features: np.ndarray  # (N, h, w, c) in the stored dtype


def row_checksums(features: np.ndarray) -> list[int]:
    """CRC32 of each row's bytes as float32 (a float16 row widened first: exact), as recorded
    at write time and checked by verify, whatever dtype the shard stores."""
    rows = np.ascontiguousarray(features, dtype=np.float32)
    return [zlib.crc32(row.tobytes()) for row in rows]


def new_shard_name(sequence: int) -> str:
    """A shard name that sorts by write order and never collides with another writer's."""
    return f"shard-{sequence:06d}-{uuid.uuid4().hex[:8]}{SHARD_SUFFIX}"


def partition_shard_name(partition: str, part: int) -> str:
    """The name of shard ``part`` of a partition of a distributed extraction: the same every
    time the partition runs, so a partition run again after its worker died replaces its own
    shard (same rows, same features) instead of adding a copy."""
    return f"shard-p{partition[:16]}-{part:03d}{SHARD_SUFFIX}"


def list_shard_files(folder: Path) -> list[Path]:
    """The complete shard files in ``folder`` (final names only), sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.name.endswith(SHARD_SUFFIX) and not p.name.startswith("."))


def write_shard(folder: Path, name: str, fingerprint: str, sha256: list[str],
                features: np.ndarray, dtype: str = "float32") -> WrittenShard:
    """Write ``features`` (N, h, w, c) and their ``sha256`` as the shard ``folder/name``,
    stored as ``dtype`` (``float16`` rounds each value to the nearest half: half the bytes).

    The file appears under its final name only when complete. On any error the temporary file
    is removed and the error propagates; the cache is left as it was before the call.
    """
    if len(sha256) != len(features):
        raise ValueError(f"{len(sha256)} sha256 for {len(features)} feature rows")
    features = np.ascontiguousarray(features, dtype=checked_storage_dtype(dtype))
    checksums = row_checksums(features)  # before the rename: nothing may fail after it
    final = folder / name
    fault_point("shard.begin")
    with replacing(final) as temp:
        with h5py.File(temp, "w") as f:
            f.attrs["fingerprint"] = fingerprint
            f.attrs["format"] = SHARD_FORMAT
            f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            f.create_dataset("features", data=features)
            f.create_dataset("sha256", data=np.array(sha256, dtype="S64"))
            f.flush()
            fault_point("shard.written")
        size = temp.stat().st_size
    fault_point("shard.renamed")
    return WrittenShard(name=name, sha256=list(sha256), checksums=checksums, bytes=size)


@dataclass(frozen=True)
class ShardLayout:
    """Where one shard's feature rows lie in its file: ``rows`` rows of ``row_shape`` stored
    as ``dtype`` (byte order included), from byte ``offset`` on, one after another, when HDF5
    stored them contiguous and unfiltered (as :func:`write_shard` does); ``offset`` None when
    only HDF5 can read them (a shard written by another tool). ``file`` is the file's
    (inode, size, mtime_ns) when the layout was read: a partition's shard is replaced under
    its own name when its partition runs again, and its rows may then lie elsewhere."""

    rows: int
    row_shape: tuple[int, ...]
    dtype: np.dtype
    offset: int | None
    file: tuple[int, int, int]

    @property
    def row_bytes(self) -> int:
        """Bytes of one stored row."""
        return int(np.prod(self.row_shape)) * self.dtype.itemsize


def read_shard_layout(path: Path) -> tuple[ShardLayout, np.ndarray]:
    """The layout of the shard at ``path`` and its sha256 column, (N,) ``S64`` (OSError or
    KeyError when it is not a readable shard)."""
    with h5py.File(path, "r") as f:
        file = _identity(os.stat(path))  # after the open: the file h5py reads, or a newer one
        features = f["features"]
        contiguous = features.chunks is None and not features.compression and \
            not features.scaleoffset and not features.shuffle
        offset = features.id.get_offset() if contiguous else None  # None before allocation
        return (ShardLayout(int(features.shape[0]), tuple(int(d) for d in features.shape[1:]),
                            features.dtype, None if offset is None else int(offset), file),
                f["sha256"][:])


def _identity(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def read_rows_at(shards: Sequence[tuple[Path, ShardLayout]], shard: np.ndarray,
                 rows: np.ndarray, dtype: np.dtype | str = np.float32) -> np.ndarray:
    """The rows ``rows[i]`` of the shards ``shards[shard[i]]`` (path, layout), every pair
    ordered by (shard, row), none repeated: (len(rows), *row_shape) as ``dtype`` ((0,) when
    no row is asked).

    A shard whose layout has an offset is read straight from its file: one ``pread`` per run
    of rows at most :data:`_RUN_GAP_BYTES` apart (HDF5's selection would cost 0.07-0.2 ms a
    call). The runs are found for every shard at once, so that the loop is one ``pread`` a
    run: a streamed dense head reads thousands of runs an epoch. Other shards are read
    through HDF5, one at a time."""
    shard, rows = np.asarray(shard, dtype=np.int64), np.asarray(rows, dtype=np.int64)
    if len(shard) != len(rows):
        raise ValueError("one shard number per row")
    if np.any((np.diff(shard) < 0) | (np.diff(shard) == 0) & (np.diff(rows) <= 0)):
        raise ValueError("rows must be ordered by (shard, row), without repeats")
    if not len(rows):
        return np.empty((0,), dtype=dtype)
    direct = np.array([layout.offset is not None for _, layout in shards])[shard]
    if direct.all():
        return _read_direct(shards, shard, rows).astype(dtype, copy=False)
    out = np.empty((len(rows), *shards[int(shard[0])][1].row_shape), dtype=dtype)
    for number in np.unique(shard[~direct]).tolist():
        path, layout = shards[number]
        if _identity(os.stat(path)) != layout.file:
            raise CacheError(_REPLACED.format(path=path))
        out[shard == number] = read_shard_rows(path, rows[shard == number])
    if direct.any():
        out[direct] = _read_direct(shards, shard[direct], rows[direct])
    return out


def _read_direct(shards: Sequence[tuple[Path, ShardLayout]], shard: np.ndarray,
                 rows: np.ndarray) -> np.ndarray:
    """:func:`read_rows_at` for shards with an offset, in their stored dtype (one for all)."""
    layouts = [layout for _, layout in shards]
    size = layouts[int(shard[0])].row_bytes
    gap = max(1, _RUN_GAP_BYTES // size)
    # runs of neighbouring rows, read whole with the rows between them
    starts = np.flatnonzero(np.concatenate(([True], (np.diff(rows) > gap)
                                             | (np.diff(shard) != 0))))
    firsts = rows[starts]
    spans = np.append(rows[starts[1:] - 1], rows[-1]) - firsts + 1
    first_layout = layouts[int(shard[0])]
    spanned = np.empty((int(spans.sum()), *first_layout.row_shape), dtype=first_layout.dtype)
    into = memoryview(spanned.reshape(-1).view(np.uint8))
    at, opened, file = 0, None, None
    try:
        for number, first, span in zip(shard[starts].tolist(), firsts.tolist(),
                                       spans.tolist()):
            path, layout = shards[number]
            if number != opened:
                if file is not None:
                    file.close()
                file, opened = open(path, "rb", buffering=0), number
                if _identity(os.fstat(file.fileno())) != layout.file:
                    raise CacheError(_REPLACED.format(path=path))
                if (layout.dtype, layout.row_shape) != (first_layout.dtype,
                                                        first_layout.row_shape):
                    raise CacheError(f"{path}: rows of {layout.dtype} {layout.row_shape}, "
                                     f"others of {first_layout.dtype} "
                                     f"{first_layout.row_shape}; run `pipeline cache verify`")
            if first < 0 or first + span > layout.rows:
                raise CacheError(f"{path}: rows {first}-{first + span - 1} asked of a shard "
                                 f"of {layout.rows}; run `pipeline cache reindex`")
            wanted = span * size
            data = os.pread(file.fileno(), wanted, layout.offset + first * size)
            if len(data) != wanted:
                raise CacheError(f"{path}: shorter than its rows ({len(data)} of {wanted} "
                                 f"bytes at row {first}); run `pipeline cache verify`")
            into[at:at + wanted] = data
            at += wanted
    finally:
        if file is not None:
            file.close()
    if len(spanned) == len(rows):
        return spanned  # no gaps: the rows as read
    at_run = np.cumsum(spans) - spans  # where each run begins in ``spanned``
    run_of = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(rows))))
    return spanned[at_run[run_of] + rows - firsts[run_of]]


_REPLACED = ("{path} was replaced since its layout was read (its partition extracted again?); "
             "run the command again")
# Rows this many bytes apart or closer are read in one pread, the rows between them with them:
# a pread of one 1 KB row took 1.6 us here (AMD EPYC), about what copying 16 KB more from the
# page cache would take (an estimate, not measured)
_RUN_GAP_BYTES = 16 * 1024


def read_shard_fingerprint_and_sha256(path: Path) -> tuple[str | None, list[str]]:
    """The fingerprint attribute and the sha256 column of a shard, in row order."""
    with h5py.File(path, "r") as f:
        return f.attrs.get("fingerprint"), [s.decode("ascii") for s in f["sha256"][:]]


def read_shard(path: Path) -> ShardContents:
    """The whole shard at ``path`` (OSError or KeyError when it is not a readable shard)."""
    with h5py.File(path, "r") as f:
        return ShardContents(fingerprint=f.attrs.get("fingerprint"),
                             sha256=[s.decode("ascii") for s in f["sha256"][:]],
                             features=f["features"][:])


def read_shard_rows(path: Path, rows: np.ndarray, expect: list[str] | None = None
                    ) -> np.ndarray:
    """Rows ``rows`` (any order, repeats allowed) of one shard: (len(rows), h, w, c) in the
    stored dtype. With ``expect`` (the sha256 each row should hold), a row that holds another
    image's features raises :class:`~cache.errors.CacheError` instead of being returned."""
    rows = np.asarray(rows, dtype=np.int64)
    # h5py fancy indexing wants strictly increasing indices: read the unique sorted rows once,
    # then put them back in the order asked for.
    unique, inverse = np.unique(rows, return_inverse=True)
    with h5py.File(path, "r") as f:
        block = f["features"][unique]
        if expect is not None:
            held = f["sha256"][unique][inverse]
            wrong = [i for i, (sha, want) in enumerate(zip(held, expect))
                     if sha.decode("ascii", "replace") != want]
            if wrong:
                raise CacheError(f"{path}: row {int(rows[wrong[0]])} holds another image than "
                                 f"the index says ({len(wrong)} row(s)); run `pipeline cache "
                                 f"reindex`, then `pipeline cache verify`")
    return block[inverse]
