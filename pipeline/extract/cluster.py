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


@dataclass
class PartitionResult:
    """What a worker sends back: the shard it wrote (None when every image failed), and
    per image that failed, its reason and whether the failure is a property of the bytes."""

    shard: WrittenShard | None
    failures: dict[str, tuple[str, bool]] = field(default_factory=dict)
    worker: str = ""


def plan_partitions(todo: list[str], paths: dict[str, Path], size: int) -> list[Partition]:
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
_WORKER_MODELS: dict[str, Inference] = {}
_WORKER_MODELS_LOCK = threading.Lock()


def _worker_inference(spec: BackboneSpec, fingerprint: str) -> Inference:
    """This worker's backbone for ``fingerprint``, after checking that the worker computes the
    same fingerprint from ``spec`` as the client did (same weights file, same releases)."""
    with _WORKER_MODELS_LOCK:
        if fingerprint not in _WORKER_MODELS:
            computed = spec.fingerprint().id
            if computed != fingerprint:
                raise WorkerMismatchError(
                    f"worker {socket.gethostname()} (pid {os.getpid()}) computes backbone "
                    f"{computed}, the client {fingerprint}: install the same weights file and "
                    f"releases on every worker")
            inference = Inference(spec)
            inference.build()
            _WORKER_MODELS[fingerprint] = inference
        return _WORKER_MODELS[fingerprint]


def extract_partition(partition: Partition, spec: BackboneSpec, fingerprint: str,
                      store_path: str, batch_size: int, decode_workers: int) -> PartitionResult:
    """Run on a worker: decode, infer and write ``partition`` as one shard in ``store_path``.

    Features are (N, h, w, c) float32, as the in-process extraction computes them.
    """
    infer = _worker_inference(spec, fingerprint)
    reader = BatchReader(paths=[Path(p) for p in partition.paths],
                         sha256=list(partition.sha256), options=spec.decode,
                         batch_size=batch_size, workers=decode_workers)
    shas: list[str] = []
    rows: list[np.ndarray] = []
    failures: dict[str, tuple[str, bool]] = {}

    def keep(keys: list[str], features: np.ndarray) -> None:
        shas.extend(keys)
        rows.append(features)

    def failed(key: str, reason: str, permanent: bool) -> None:
        failures[key] = (reason, permanent)

    extract_batches(reader, partition.sha256, infer, keep, failed)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    if not shas:
        return PartitionResult(None, failures, worker)
    written = write_shard(Path(store_path), partition_shard_name(partition.key, 0), fingerprint,
                          shas, np.concatenate(rows))
    return PartitionResult(written, failures, worker)


def extract_on_scheduler(ctx: RunContext, writer: ShardWriter, todo: list[str],
                         paths: dict[str, Path], progress: bool,
                         on_failure: Callable[[str, str, bool], None]) -> list[str]:
    """Extract ``todo`` (image sha256; ``paths`` maps each to a file) on the dask scheduler of
    ``cluster.scheduler``, one partition of ``stages.extract.shard_size`` images per task;
    ``on_failure(sha256, reason, permanent)`` is told of each image that could not be decoded.
    Returns the sha256 extracted."""
    params, cluster = ctx.config.stages.extract, ctx.config.cluster
    partitions = plan_partitions(todo, paths, params.shard_size)
    with scheduler_client(cluster.scheduler) as client:
        return extract_on_cluster(client, partitions, ctx.spec, ctx.fingerprint.id, writer,
                                  params.batch_size, params.decode_workers,
                                  cluster.worker_resources, progress, on_failure)


def extract_on_cluster(client, partitions: list[Partition], spec: BackboneSpec,
                       fingerprint: str, writer: ShardWriter, batch_size: int,
                       decode_workers: int, resources: dict[str, float], progress: bool,
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
        return client.submit(extract_partition, partition, spec, fingerprint,
                             str(writer.store.path), batch_size, decode_workers,
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
                if result.shard is not None:
                    writer.commit_written(result.shard)
                    extracted += result.shard.sha256
                for sha, (reason, permanent) in result.failures.items():
                    on_failure(sha, reason, permanent)
                bar.update(len(result.shard.sha256 if result.shard else ()) +
                           len(result.failures))
    finally:
        client.cancel(list(pending.futures))  # not yet finished (a no-op after a full run)
        pending.clear()
    # every task has finished: a temporary file left now is a dead worker's half-written shard
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
