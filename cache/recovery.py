"""Crash recovery: bring a fingerprint's cache folder back to a clean state, under its lock.

Any earlier writer may have died at any moment. What it can have left, and what happens to it:

- a temporary file (``.*.tmp``): a write that never got its final name; removed;
- a torn or damaged manifest line: dropped when the journal is rewritten;
- a listed shard whose file is gone (deleted, or a rewrite that crashed after removing it):
  its entries become missing, so the next extraction computes them again;
- a complete shard the manifest does not list (renamed just before the crash, or written by a
  worker of a distributed run): adopted, with its rows' checksums; rows whose image another
  shard already holds are handed back as *copies* to drop, and a shard of nothing but copies
  is deleted;
- a shard of another fingerprint or one that cannot be read under a final name: moved aside
  (``.<name>.foreign`` / ``.<name>.unreadable``) for a person to look at;
- entries ``cache verify`` found damaged: handed back as *damaged* rows to drop.

:func:`recover` changes only what it can change alone (files and the journal); dropping rows
rewrites shards, which is the writer's job (:meth:`cache.writer.ShardWriter.rewrite_without`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .files import TEMP_SUFFIX, write_atomic
from .manifest import (
    Manifest,
    append_shard,
    load_manifest,
    read_damaged,
    rewrite_manifest,
)
from .reader import DESCRIPTION_NAME
from .shard import WrittenShard, list_shard_files, read_shard, row_checksums


@dataclass
class Recovered:
    """The folder's manifest after recovery, and the rows still to drop, per shard."""

    manifest: Manifest
    copies: dict[str, set[int]] = field(default_factory=dict)    # rows held by another shard
    damaged: dict[str, set[int]] = field(default_factory=dict)   # rows verify found damaged
    damaged_recorded: bool = False   # damaged.json exists: to remove once the rows are dropped
    adopted_shards: int = 0


def remove_temporary_files(folder: Path) -> int:
    """Delete writes in ``folder`` that never got their final name; only the lock holder may,
    as no writer is then left to finish them. Returns how many were removed."""
    removed = 0
    for temp in folder.glob(f".*{TEMP_SUFFIX}"):
        temp.unlink(missing_ok=True)
        removed += 1
    return removed


def rows_held_elsewhere(sha256: Sequence[str], manifest: Manifest, name: str) -> set[int]:
    """Rows of shard ``name`` whose image another shard in ``manifest`` already holds:
    copies, never to be listed."""
    return {row for row, sha in enumerate(sha256)
            if sha in manifest.entries and manifest.entries[sha][0] != name}


def recover(folder: Path, fingerprint: str, description: dict) -> Recovered:
    """Recover ``folder`` (the cache of ``fingerprint``); the caller holds its write lock.

    ``description`` is written as ``fingerprint.json`` when the folder has none yet.
    """
    if not (folder / DESCRIPTION_NAME).exists():
        write_atomic(folder / DESCRIPTION_NAME,
                     json.dumps(description, indent=2, sort_keys=True) + "\n")
    remove_temporary_files(folder)
    manifest = load_manifest(folder)
    gone = [name for name in manifest.shards if not (folder / name).exists()]
    manifest.remove(gone)
    if manifest.damaged_lines or gone:
        rewrite_manifest(folder, manifest)
    recovered = Recovered(manifest)
    for shard in list_shard_files(folder):
        if shard.name not in manifest.shards:
            _adopt(folder, fingerprint, shard, recovered)
    damaged = read_damaged(folder)
    recovered.damaged_recorded = bool(damaged)
    for entry in damaged:
        if entry.shard in manifest.shards:
            recovered.damaged.setdefault(entry.shard, set()).add(entry.row)
    return recovered


def _adopt(folder: Path, fingerprint: str, shard: Path, recovered: Recovered) -> None:
    """List a complete shard that a crash kept out of the manifest."""
    try:
        contents = read_shard(shard)
    except (OSError, KeyError):
        # Unreadable under a final name should not happen (rename is atomic); move it
        # aside rather than delete it, so nothing is destroyed without a person looking.
        shard.rename(shard.with_name(f".{shard.name}.unreadable"))
        return
    if contents.fingerprint != fingerprint or len(contents.sha256) != len(contents.features):
        # A shard of another fingerprint (copied in by hand) would serve wrong features.
        shard.rename(shard.with_name(f".{shard.name}.foreign"))
        return
    copies = rows_held_elsewhere(contents.sha256, recovered.manifest, shard.name)
    if len(copies) == len(contents.sha256):
        shard.unlink()  # it holds nothing new
        return
    append_shard(folder, recovered.manifest, WrittenShard(
        name=shard.name, sha256=contents.sha256, checksums=row_checksums(contents.features),
        bytes=shard.stat().st_size))
    recovered.adopted_shards += 1
    if copies:
        recovered.copies[shard.name] = copies
