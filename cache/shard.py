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

import uuid
import zlib
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
