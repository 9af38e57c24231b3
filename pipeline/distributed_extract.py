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

import hashlib
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
from cache.shard import WrittenShard, partition_shard_name, write_shard

from .batches import BatchReader
from .errors import PipelineError
from .fingerprint import BackboneSpec, backbone_fingerprint


class NoSuitableWorkerError(PipelineError):
    """The scheduler has no worker that can run an extraction partition."""


class WorkerMismatchError(PipelineError):
    """A worker computes another backbone fingerprint than the client (other weights file,
    Keras release or input size on that machine): its features would not match the cache."""


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
        key = hashlib.sha256("\n".join(chunk).encode("ascii")).hexdigest()
        partitions.append(Partition(key=key, paths=tuple(str(paths[s]) for s in chunk),
                                    sha256=chunk))
    return partitions


# The backbone of this worker process, per fingerprint: built by its first partition and kept
# for every later one (building VGG16 and tracing its call costs seconds). The lock keeps two
# threads of one worker from building two copies at once.
_WORKER_MODELS: dict[str, object] = {}
_WORKER_MODELS_LOCK = threading.Lock()


def _worker_inference(spec: BackboneSpec, fingerprint: str):
    with _WORKER_MODELS_LOCK:
        return _build_once(spec, fingerprint)


def _build_once(spec: BackboneSpec, fingerprint: str):
    if fingerprint not in _WORKER_MODELS:
        computed, _ = backbone_fingerprint(spec)
        if computed != fingerprint:
            raise WorkerMismatchError(
                f"worker {socket.gethostname()} (pid {os.getpid()}) computes backbone "
                f"{computed}, the client {fingerprint}: install the same weights file and "
                f"releases on every worker")
        from .backbone import build_feature_extractor, compiled_inference
        _WORKER_MODELS[fingerprint] = compiled_inference(build_feature_extractor(spec))
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
    for batch in reader:
        if batch.ok.any():
            features = infer(batch.pixels).numpy()
            shas += [partition.sha256[i] for i in batch.positions[batch.ok]]
            rows.append(features[batch.ok])
        for i in batch.positions[~batch.ok]:
            failures[partition.sha256[i]] = (reader.failures.get(int(i), "could not be decoded"),
                                             int(i) not in reader.transient)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    if not shas:
        return PartitionResult(None, failures, worker)
    written = write_shard(Path(store_path), partition_shard_name(partition.key, 0), fingerprint,
                          shas, np.concatenate(rows))
    return PartitionResult(written, failures, worker)


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
