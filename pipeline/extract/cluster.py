"""Extraction on a dask.distributed cluster: partitions of images out, shard files back.

The client (the ``pipeline run extract`` process) holds the cache's write lock for the whole
run, splits the images the cache lacks into partitions of ``stages.extract.shard_size``, and
submits one task per partition. A worker decodes its partition's images, runs the backbone
(built once per worker process and kept for every later partition), and writes one shard file
into the cache folder, which every worker must see (a shared filesystem). Only the client
writes the manifest: it records each shard as its task's result arrives. No two processes
write one HDF5 file: each write goes to a temporary name of its own and is renamed into place.

A worker that dies mid-partition leaves at most a temporary file (ignored, and removed by the
next writer's recovery); dask runs the partition again on another worker. The shard's name is
derived from the partition's images, so a partition that ran twice (its first worker died after
the rename) replaces its own shard with the same rows instead of adding a copy: every image
ends in the cache exactly once.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cache import ShardWriter
from cache.files import sha256_text
from cache.shard import WrittenShard, partition_shard_name, write_shard

from ..backbone import BackboneSpec
from ..cluster import scheduler_client
from ..context import RunContext
from ..data.batches import BatchReader
from ..errors import NoSuitableWorkerError, WorkerMismatchError
from .loop import Inference, extract_batches


@dataclass(frozen=True)
class Partition:
    """One task: images to extract into one shard."""

    key: str                   # sha256 of the partition's image hashes, in order
    paths: tuple[str, ...]     # absolute paths, as the workers see them
    sha256: tuple[str, ...]


@dataclass(frozen=True)
class PartTarget:
    """Where a partition's rows of one part (the output, or a tap) go: the part's store
    folder, the fingerprint its shards carry, and the dtype they store."""

    folder: str
    fingerprint: str
    dtype: str = "float32"


@dataclass
class PartitionResult:
    """What a worker sends back: the shard it wrote for each part (none when every image
    failed), and per image that failed, its reason and whether the failure is a property of
    the bytes."""

    shards: dict[str, WrittenShard] = field(default_factory=dict)
    failures: dict[str, tuple[str, bool]] = field(default_factory=dict)
    worker: str = ""

    @property
    def sha256(self) -> list[str]:
        """The images the shards hold (every shard holds the same rows)."""
        return next(iter(self.shards.values())).sha256 if self.shards else []


def plan_partitions(todo: list[str], paths: dict[str, str], size: int) -> list[Partition]:
    """Split ``todo`` (image sha256, in order) into partitions of at most ``size`` images."""
    partitions = []
    for start in range(0, len(todo), size):
        chunk = tuple(todo[start:start + size])
        key = sha256_text("\n".join(chunk))
        partitions.append(Partition(key=key, paths=tuple(str(paths[s]) for s in chunk),
                                    sha256=chunk))
    return partitions


# The backbone of this worker process, per fingerprint: built by its first partition and kept
# for every later one (building VGG16 and tracing its call costs seconds). The lock keeps two
# threads of one worker from building two copies at once.
_WORKER_MODELS: dict[tuple[str, tuple[str, ...]], Inference] = {}
_WORKER_MODELS_LOCK = threading.Lock()


def _worker_inference(spec: BackboneSpec, fingerprint: str,
                      parts: tuple[str, ...] | None = None) -> Inference:
    """This worker's backbone for ``fingerprint`` computing ``parts``, after checking that the
    worker computes the same fingerprint from ``spec`` as the client did (same weights file,
    same releases)."""
    parts = tuple(parts or spec.parts)
    with _WORKER_MODELS_LOCK:
        if (fingerprint, parts) not in _WORKER_MODELS:
            computed = spec.fingerprint().id
            if computed != fingerprint:
                raise WorkerMismatchError(
                    f"worker {socket.gethostname()} (pid {os.getpid()}) computes backbone "
                    f"{computed}, the client {fingerprint}: install the same weights file and "
                    f"releases on every worker")
            inference = Inference(spec, parts)
            inference.build()
            _WORKER_MODELS[fingerprint, parts] = inference
        return _WORKER_MODELS[fingerprint, parts]


def extract_partition(partition: Partition, spec: BackboneSpec, fingerprint: str,
                      targets: dict[str, PartTarget], batch_size: int,
                      decode_workers: int) -> PartitionResult:
    """Run on a worker: decode ``partition``, infer the parts of ``targets`` and write each as
    one shard into its store folder.

    Features are float32, as the in-process extraction computes them.
    """
    infer = _worker_inference(spec, fingerprint, tuple(targets))
    reader = BatchReader(paths=[Path(p) for p in partition.paths],
                         sha256=list(partition.sha256), options=spec.decode,
                         batch_size=batch_size, workers=decode_workers)
    shas: list[str] = []
    rows: dict[str, list[np.ndarray]] = {part: [] for part in targets}
    failures: dict[str, tuple[str, bool]] = {}

    def keep(keys: list[str], features: dict[str, np.ndarray]) -> None:
        shas.extend(keys)
        for part, part_rows in features.items():
            rows[part].append(part_rows)

    def failed(key: str, reason: str, permanent: bool) -> None:
        failures[key] = (reason, permanent)

    extract_batches(reader, partition.sha256, infer, keep, failed)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    if not shas:
        return PartitionResult({}, failures, worker)
    shards = {part: write_shard(Path(target.folder), partition_shard_name(partition.key, 0),
                                target.fingerprint, shas, np.concatenate(rows[part]),
                                target.dtype)
              for part, target in targets.items()}
    return PartitionResult(shards, failures, worker)


def extract_on_scheduler(ctx: RunContext, parts: tuple[str, ...],
                         writers: dict[str, ShardWriter], todo: list[str],
                         paths: dict[str, str], progress: bool,
                         on_failure: Callable[[str, str, bool], None]) -> list[str]:
    """Extract ``parts`` of ``todo`` (image sha256; ``paths`` maps each to a file) on the dask
    scheduler of ``cluster.scheduler``, one partition of ``stages.extract.shard_size`` images
    per task, each part's shard recorded by its writer of ``writers``; ``on_failure(sha256,
    reason, permanent)`` is told of each image that could not be decoded. Returns the sha256
    extracted."""
    params, cluster = ctx.config.stages.extract, ctx.config.cluster
    partitions = plan_partitions(todo, paths, params.shard_size)
    targets = {part: PartTarget(str(writers[part].store.path), writers[part].store.fingerprint,
                                writers[part].dtype) for part in parts}
    with scheduler_client(cluster.scheduler) as client:
        return extract_on_cluster(client, partitions, ctx.spec, ctx.fingerprint.id, targets,
                                  writers, params.batch_size, params.decode_workers,
                                  cluster.worker_resources, progress, on_failure)


def extract_on_cluster(client, partitions: list[Partition], spec: BackboneSpec,
                       fingerprint: str, targets: dict[str, PartTarget],
                       writers: dict[str, ShardWriter], batch_size: int, decode_workers: int,
                       resources: dict[str, float], progress: bool,
                       on_failure: Callable[[str, str, bool], None]) -> list[str]:
    """Run every partition on ``client``'s cluster and record each shard as it arrives.

    At most a few tasks per worker are submitted at a time (each carries its paths and
    hashes), and a task's result is released as soon as its shard is recorded, so the
    scheduler never runs a recorded partition again. ``on_failure(sha256, reason,
    permanent)`` is called for each image that failed, as results arrive. Returns the sha256
    extracted. On an error or Ctrl-C, the shards already recorded stay in the cache; tasks
    not started are cancelled (running ones finish, and the next writer adopts or drops
    what they write).
    """
    from distributed import as_completed

    workers = _check_workers(client, resources)
    run = uuid.uuid4().hex[:8]  # task keys are global on a scheduler shared by several runs
    queue = list(reversed(partitions))

    def submit_next():
        partition = queue.pop()
        return client.submit(extract_partition, partition, spec, fingerprint, targets,
                             batch_size, decode_workers,
                             key=f"extract-{run}-{partition.key[:16]}", pure=False,
                             resources=resources or None)

    pending = as_completed([submit_next()
                            for _ in range(min(len(queue), max(4 * workers, 8)))])
    extracted: list[str] = []
    total = sum(len(p.sha256) for p in partitions)
    try:
        with tqdm(total=total, unit="img", desc="extract (cluster)",
                  disable=None if progress else True, dynamic_ncols=True) as bar:
            for future in pending:
                result: PartitionResult = future.result()
                future.release()
                if queue:
                    pending.add(submit_next())
                for part, shard in result.shards.items():
                    writers[part].commit_written(shard)
                extracted += result.sha256
                for sha, (reason, permanent) in result.failures.items():
                    on_failure(sha, reason, permanent)
                bar.update(len(result.sha256) + len(result.failures))
    finally:
        client.cancel(list(pending.futures))  # not yet finished (a no-op after a full run)
        pending.clear()
    # every task has finished: a temporary file left now is a dead worker's half-written shard
    for writer in writers.values():
        writer.remove_temporary_files()
    return extracted


def _check_workers(client, resources: dict[str, float], timeout: float = 60.0) -> int:
    """How many workers can run a partition; an error instead of a silent wait when none can
    (no worker joined within ``timeout`` seconds, or none offers ``resources``)."""
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise NoSuitableWorkerError(f"no dask worker joined the scheduler within "
                                    f"{timeout:g} s; start workers with `dask worker "
                                    f"{client.scheduler.address}`") from None
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    able = [w for w in workers
            if all(w.get("resources", {}).get(name, 0) >= amount
                   for name, amount in resources.items())]
    if not able:
        offered = sorted({name for w in workers for name in w.get("resources", {})})
        raise NoSuitableWorkerError(
            f"cluster.worker_resources {resources}: no worker offers them (resources offered: "
            f"{', '.join(offered) or 'none'}); start workers with `dask worker ... "
            f"--resources GPU=1` or change cluster.worker_resources")
    return len(able)
