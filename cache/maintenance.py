"""Cache maintenance: verify entries against their write-time checksums, and collect garbage.

``verify_store`` reads every committed shard without any lock (committed shards never change)
and checks each manifest row: the shard file exists and opens, belongs to this fingerprint,
holds the row, the row's sha256 is the manifest's, and its CRC32 equals the one recorded when
it was written. Damaged entries are listed in ``damaged.json``; from then on the store treats
them as missing, so the next extraction computes them again, and its writer (which holds the
lock) rewrites each damaged shard's good rows into a new shard and moves the damaged file aside
as ``.<name>.damaged`` for a person to look at.

``collect_garbage`` finds entries that no dataset view references and, unless it is a dry
run, removes them under the write lock: a shard with no referenced row is deleted, one with
some is rewritten with those rows only. A running extraction holds the lock, so gc waits for
it or refuses, and never touches a shard being written.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .manifest import DamagedEntry, load_manifest, write_damaged
from .reader import FeatureStore
from .shard import row_checksums

VERIFY_CHUNK_ROWS = 256  # rows read at a time: memory stays bounded on big shards
PARALLEL_SHARDS = 16     # fewer shards than this are verified in the calling process


@dataclass
class VerifyReport:
    """What :func:`verify_store` checked and found."""

    fingerprint: str
    shards: int = 0
    rows: int = 0
    damaged: list[DamagedEntry] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is damaged."""
        return not self.damaged


def _check_shard(folder: Path, fingerprint: str, name: str, shas: tuple[str, ...],
                 checksums: tuple[int, ...]) -> list[DamagedEntry]:
    path = folder / name

    def every_row(reason: str) -> list[DamagedEntry]:
        return [DamagedEntry(sha, name, row, reason) for row, sha in enumerate(shas)]

    if not path.is_file():
        return every_row("shard file missing")
    damaged = []
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("fingerprint") != fingerprint:
                return every_row("shard belongs to another fingerprint")
            features, stored = f["features"], f["sha256"]
            for start in range(0, len(shas), VERIFY_CHUNK_ROWS):
                stop = min(start + VERIFY_CHUNK_ROWS, len(shas))
                have = min(stop, len(features), len(stored))
                block = features[start:have] if have > start else np.empty((0,))
                names = [s.decode("ascii", "replace") for s in stored[start:have]]
                crcs = row_checksums(block) if len(block) else []
                for row in range(start, stop):
                    i = row - start
                    if row >= have:
                        reason = "row missing (shard shorter than its manifest record)"
                    elif names[i] != shas[row]:
                        reason = f"row holds {names[i][:12]}..., not this image"
                    elif checksums and crcs[i] != checksums[row]:
                        reason = "checksum mismatch (the bytes changed after writing)"
                    else:
                        continue
                    damaged.append(DamagedEntry(shas[row], name, row, reason))
    except (OSError, KeyError, ValueError) as exc:
        return every_row(f"shard unreadable: {' '.join(str(exc).split())[:120]}")
    return damaged


def verify_store(store: FeatureStore, record: bool = True,
                 workers: int | None = None) -> VerifyReport:
    """Check every manifest row of ``store``; with ``record``, write the damaged entries to
    ``damaged.json`` (or remove it when all is well) so the store treats them as missing.

    Shards are checked in ``workers`` processes at once (default: one per core), as reading
    and checksumming a shard is CPU work that one process would do on one core; a store of
    few shards is checked in this process, where starting workers would cost more."""
    manifest = load_manifest(store.path)
    report = VerifyReport(store.fingerprint)
    shards = list(manifest.shards.values())
    # the cores this process may use (a container's share, not the host's count), and no more
    # workers than shards
    workers = min(workers or len(os.sched_getaffinity(0)), max(len(shards), 1))
    jobs = [(store.path, store.fingerprint, s.name, s.sha256, s.checksums) for s in shards]
    if workers > 1 and len(shards) >= PARALLEL_SHARDS:
        # spawn: a fork of a process with threads (a dask client, a progress bar) may hang
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) \
                as pool:
            results = list(pool.map(_check_shard, *zip(*jobs), chunksize=4))
    else:
        results = [_check_shard(*job) for job in jobs]
    for shard, damaged in zip(shards, results):
        report.shards += 1
        report.rows += shard.rows
        if damaged and not (store.path / shard.name).exists() and \
                shard.name not in load_manifest(store.path).shards:
            continue  # retired by a repair or gc that ran meanwhile, not lost
        report.damaged += damaged
    if record:
        write_damaged(store.path, report.damaged)
        store.refresh()
    return report


@dataclass
class GarbageReport:
    """Unreferenced entries of one store, and what removing them frees."""

    fingerprint: str
    entries: int = 0
    referenced: int = 0
    unreferenced: list[str] = field(default_factory=list)
    shards_deleted: list[str] = field(default_factory=list)   # whole shards to go
    shards_rewritten: list[str] = field(default_factory=list)  # shards keeping some rows
    bytes_freed: int = 0      # estimated before, measured after a real run
    applied: bool = False
    recent: int = 0           # unreferenced but newer than every view: kept (see gc)


def plan_garbage(store: FeatureStore, keep: Iterable[str]) -> GarbageReport:
    """Which entries of ``store`` are not in ``keep``, and the shards and bytes they hold."""
    keep = set(keep)
    manifest = load_manifest(store.path)
    report = GarbageReport(store.fingerprint, entries=len(manifest.entries))
    report.unreferenced = [sha for sha in manifest.entries if sha not in keep]
    report.referenced = report.entries - len(report.unreferenced)
    gone = set(report.unreferenced)
    for shard in manifest.shards.values():
        dropped = sum(1 for sha in shard.sha256 if sha in gone)
        if not dropped:
            continue
        size = (store.path / shard.name).stat().st_size if (store.path / shard.name).exists() \
            else 0
        if dropped == shard.rows:
            report.shards_deleted.append(shard.name)
            report.bytes_freed += size
        else:
            report.shards_rewritten.append(shard.name)
            report.bytes_freed += size * dropped // max(shard.rows, 1)
    return report
