"""The manifest of one fingerprint's cache: which shard and row holds each image's features.

It is an append-only journal, ``manifest.jsonl``: one JSON line per committed shard, appended
and fsynced after the shard has its final name::

    {"shard": "shard-000003-1a2b3c4d.h5", "sha256": ["ab12...", ...], "crc32": [...],
     "bytes": 16779264, "created": "2026-11-23T12:00:00+00:00"}

Row ``i`` of the shard holds the features of ``sha256[i]``; ``crc32[i]`` is the checksum of that
row recorded at write time. Appending one line per shard keeps a commit O(shard), not O(cache).
A crash can leave a torn line; readers skip it and the next writer rewrites the journal
without it (the shard it described is adopted again from the shard file itself, which is the
source of truth).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .faults import fault_point
from .files import write_atomic
from .shard import WrittenShard

MANIFEST_NAME = "manifest.jsonl"
# Entries the last ``verify`` found damaged; readers treat them as missing, the next writer
# rewrites their shards without them (cache.maintenance).
DAMAGED_NAME = "damaged.json"


@dataclass(frozen=True)
class ShardRecord:
    """A committed shard as the manifest knows it."""

    name: str
    sha256: tuple[str, ...]
    checksums: tuple[int, ...]
    bytes: int
    created: str = ""

    @property
    def rows(self) -> int:
        return len(self.sha256)


@dataclass(frozen=True)
class DamagedEntry:
    """A manifest row whose features cannot be trusted, and why."""

    sha256: str
    shard: str
    row: int
    reason: str


def read_damaged(folder: Path) -> list[DamagedEntry]:
    """The entries the last verify found damaged under ``folder`` ([] when none recorded)."""
    try:
        items = json.loads((folder / DAMAGED_NAME).read_text(encoding="utf-8"))["damaged"]
        return [DamagedEntry(i["sha256"], i["shard"], int(i["row"]), i["reason"]) for i in items]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError):
        return []  # a torn record; the next verify writes it again


def write_damaged(folder: Path, damaged: list[DamagedEntry]) -> None:
    """Record ``damaged`` in ``folder/damaged.json`` (atomically), or remove the record when
    the list is empty."""
    path = folder / DAMAGED_NAME
    if not damaged:
        path.unlink(missing_ok=True)
        return
    payload = {"damaged": [entry.__dict__ for entry in damaged]}
    write_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


@dataclass
class Manifest:
    """Parsed manifest: shard records in commit order and the sha256 -> (shard, row) map.

    When the same sha256 appears in two shards (possible only if shards were copied in by
    hand), the first committed one wins, so lookups are deterministic.
    """

    shards: dict[str, ShardRecord] = field(default_factory=dict)
    entries: dict[str, tuple[str, int]] = field(default_factory=dict)
    damaged_lines: int = 0   # lines that could not be parsed (a torn write), skipped

    def remove(self, names: Iterable[str]) -> None:
        """Forget the shards ``names``, at once (one pass over the entries, however many);
        their entries map to another shard's copy, if any."""
        for name in names:
            self.shards.pop(name, None)
        self.rebuild_entries()

    def detach(self, name: str) -> ShardRecord:
        """Forget the shard ``name`` and the entries that point at it, in time proportional to
        its rows; an entry another shard also holds stays missing until
        :meth:`rebuild_entries` (call it once after detaching several shards)."""
        record = self.shards.pop(name)
        for row, sha in enumerate(record.sha256):
            if self.entries.get(sha) == (name, row):
                del self.entries[sha]
        return record

    def rebuild_entries(self) -> None:
        """The sha256 -> (shard, row) map again from the shard records (first one wins)."""
        self.entries = {}
        for record in self.shards.values():
            for row, sha in enumerate(record.sha256):
                self.entries.setdefault(sha, (record.name, row))

    def forget_damaged(self, damaged: list[DamagedEntry]) -> None:
        """Drop the entries that point at a damaged (shard, row)."""
        for entry in damaged:
            if self.entries.get(entry.sha256) == (entry.shard, entry.row):
                del self.entries[entry.sha256]

    def add(self, record: ShardRecord) -> None:
        """Register ``record`` (ignored when a shard of that name is already known)."""
        if record.name in self.shards:
            return
        self.shards[record.name] = record
        for row, sha in enumerate(record.sha256):
            self.entries.setdefault(sha, (record.name, row))


def _record_line(record: ShardRecord) -> bytes:
    return json.dumps({"shard": record.name, "sha256": list(record.sha256),
                       "crc32": list(record.checksums), "bytes": record.bytes,
                       "created": record.created}, separators=(",", ":")).encode() + b"\n"


def load_manifest(folder: Path) -> Manifest:
    """Read ``folder/manifest.jsonl``; a missing file is an empty manifest.

    Lines that do not parse (a write torn by a crash, possibly with the next line appended
    to it) are counted in ``damaged_lines`` and skipped: the shards they described are still
    on disk and get adopted again by the next writer.
    """
    manifest = Manifest()
    try:
        data = (folder / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        return manifest
    for line in data.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("torn last line")
            item = json.loads(line)
            record = ShardRecord(name=item["shard"], sha256=tuple(item["sha256"]),
                                 checksums=tuple(item["crc32"]), bytes=int(item["bytes"]),
                                 created=item.get("created", ""))
        except (ValueError, KeyError, TypeError):
            manifest.damaged_lines += 1
            continue
        manifest.add(record)
    return manifest


def rewrite_manifest(folder: Path, manifest: Manifest) -> None:
    """Replace the journal by the good records of ``manifest`` (temporary file, then rename).

    Call only while holding the write lock.
    """
    write_atomic(folder / MANIFEST_NAME,
                 b"".join(_record_line(record) for record in manifest.shards.values()))
    manifest.damaged_lines = 0


def _write_all(fh, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[fh.write(view):]


def append_shard(folder: Path, manifest: Manifest, shard: WrittenShard) -> ShardRecord:
    """Commit ``shard`` to the journal (fsynced) and to the in-memory ``manifest``."""
    record = ShardRecord(name=shard.name, sha256=tuple(shard.sha256),
                         checksums=tuple(shard.checksums), bytes=shard.bytes,
                         created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    line = _record_line(record)
    # unbuffered, so that nothing of a failed line is left in a buffer to be flushed later
    with open(folder / MANIFEST_NAME, "ab", buffering=0) as fh:
        start = os.fstat(fh.fileno()).st_size
        try:
            half = len(line) // 2
            _write_all(fh, line[:half])
            fault_point("manifest.partial")
            _write_all(fh, line[half:])
            os.fsync(fh.fileno())
        except BaseException:
            # A failed append (disk full, Ctrl-C) must not leave half a line for the next one
            # to be glued to: cut the journal back to where it was (the shard is adopted later).
            os.ftruncate(fh.fileno(), start)
            raise
    manifest.add(record)
    fault_point("manifest.appended")
    return record
