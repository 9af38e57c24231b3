"""Extraction on a dask.distributed cluster: files to hash and partitions of images out,
hashes and shard files back.

The client (the ``pipeline run extract`` process) reads no image (but for augmented copies,
which it extracts itself: :mod:`~pipeline.extract.augmented`): the files its hash state
cannot vouch for (new or changed since they were last hashed) are hashed by the workers, in
tasks of ``stages.extract.shard_size`` paths, and the client records what they found in the
hash state like its own hashing would (the racy-timestamp rule counted from before the first
task was submitted). It connects to the scheduler only when there is something to hash or
extract: a rerun with nothing new never does.

The client holds the cache's write lock for the whole extraction, splits the images the cache
lacks into partitions of ``stages.extract.shard_size``, and submits one task per partition. A
worker decodes its partition's images, runs the backbone (built once per worker process and
kept for every later partition), and writes one shard file into the cache folder, which every
worker must see (a shared filesystem). Only the client writes the manifest: it records each
shard as its task's result arrives. No two processes write one HDF5 file: each write goes to
a temporary name of its own and is renamed into place.

A worker that dies mid-partition leaves at most a temporary file (ignored, and removed by the
next writer's recovery); dask runs the partition again on another worker. The shard's name is
derived from the partition's images, so a partition that ran twice (its first worker died after
the rename) replaces its own shard with the same rows instead of adding a copy: every image
ends in the cache exactly once.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cache import ShardWriter
from cache.faults import fault_point
from cache.files import sha256_text
from cache.shard import WrittenShard, partition_shard_name, write_shard

from ..backbone import BackboneSpec
from ..cluster import scheduler_client
from ..config import ClusterConfig
from ..context import RunContext
from ..data.batches import BatchReader
from ..data.bulk import gc_running
from ..data.scan import HashedFile, hash_in_threads
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


def hash_paths(paths: list[str], threads: int) -> list[HashedFile]:
    """Run on a worker: hash each of ``paths`` in ``threads`` threads. A file this worker
    cannot read is named with the worker in its reason (a worker without the data's mount
    says so in the run's skipped files)."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    hashed = [found if found.sha256 is not None else
              found._replace(error=f"{found.error} (on worker {worker})")
              for found in hash_in_threads(threads)(paths)]
    fault_point("cluster.hashed")  # tests kill a worker here: its task runs again elsewhere
    return hashed


class SchedulerSession:
    """One extract run's use of the dask scheduler of ``cluster.scheduler``: connected on first
    use (and its workers checked), closed by :meth:`close`. It hashes files on the workers
    (:meth:`hash_files`, a :data:`~pipeline.data.scan.FileHasher`) and extracts partitions
    there (:meth:`extract`)."""

    def __init__(self, cluster: ClusterConfig, files_per_task: int, threads: int):
        self.cluster = cluster
        self.files_per_task = files_per_task
        self.threads = threads
        self._stack = contextlib.ExitStack()
        self._client = None
        self._workers = 0

    def client(self):
        """The connected client (connecting, and checking the workers, the first time)."""
        if self._client is None:
            client = self._stack.enter_context(scheduler_client(self.cluster.scheduler))
            self._workers = _check_workers(client, self.cluster.worker_resources)
            self._client = client
        return self._client

    @property
    def in_flight(self) -> int:
        """Tasks submitted and not yet finished at most: a few per worker (each carries its
        paths; a scheduler flooded with all of them would hold them all)."""
        return max(4 * self._workers, 8)

    def close(self) -> None:
        """Disconnect (a no-op when never connected)."""
        self._stack.close()
        self._client = None

    def hash_files(self, paths: list[str]) -> Iterator[HashedFile]:
        """Every file of ``paths`` hashed on the workers, :attr:`files_per_task` paths a task,
        as tasks finish."""
        if not paths:
            return
        client = self.client()
        run = uuid.uuid4().hex[:8]  # task keys are global on a scheduler shared by several runs
        chunks = [paths[i:i + self.files_per_task]
                  for i in range(0, len(paths), self.files_per_task)]

        def submit(index: int):
            return client.submit(hash_paths, chunks[index], self.threads,
                                 key=f"hash-{run}-{index}", pure=False,
                                 resources=self.cluster.worker_resources or None)

        # the scan pauses the garbage collector for its records; the client's event loop
        # makes reference cycles with every task, which must not pile up meanwhile
        with gc_running(), contextlib.closing(_as_finished(
                client, map(submit, range(len(chunks))), self.in_flight)) as finished:
            for hashed in finished:
                yield from hashed

    def extract(self, ctx: RunContext, parts: tuple[str, ...],
                writers: dict[str, ShardWriter], todo: list[str], paths: dict[str, str],
                progress: bool, on_failure: Callable[[str, str, bool], None]) -> list[str]:
        """Extract ``parts`` of ``todo`` (image sha256; ``paths`` maps each to a file), one
        partition of ``stages.extract.shard_size`` images per task, each part's shard recorded
        by its writer of ``writers``; ``on_failure(sha256, reason, permanent)`` is told of each
        image that could not be decoded. Returns the sha256 extracted."""
        params = ctx.config.stages.extract
        partitions = plan_partitions(todo, paths, params.shard_size)
        targets = {part: PartTarget(str(writers[part].store.path),
                                    writers[part].store.fingerprint, writers[part].dtype)
                   for part in parts}
        client = self.client()
        return extract_on_cluster(client, partitions, ctx.spec, ctx.fingerprint.id, targets,
                                  writers, params.batch_size, params.decode_workers,
                                  self.cluster.worker_resources, progress, on_failure,
                                  self.in_flight)


def _as_finished(client, submissions: Iterator, in_flight: int) -> Iterator:
    """The results of the futures ``submissions`` makes, as they finish, with at most
    ``in_flight`` submitted and not yet finished. Each future is released once its result is
    taken, so the scheduler never runs a finished task again. On an error, or when the caller
    stops early, the tasks not yet finished are cancelled (running ones finish)."""
    from distributed import as_completed

    pending = as_completed([future for _, future in zip(range(in_flight), submissions)])
    try:
        for future in pending:
            result = future.result()
            future.release()
            following = next(submissions, None)
            if following is not None:
                pending.add(following)
            yield result
    finally:
        client.cancel(list(pending.futures))  # not yet finished (a no-op after a full run)
        pending.clear()


def extract_on_cluster(client, partitions: list[Partition], spec: BackboneSpec,
                       fingerprint: str, targets: dict[str, PartTarget],
                       writers: dict[str, ShardWriter], batch_size: int, decode_workers: int,
                       resources: dict[str, float], progress: bool,
                       on_failure: Callable[[str, str, bool], None], in_flight: int
                       ) -> list[str]:
    """Run every partition on ``client``'s cluster, at most ``in_flight`` at a time, and
    record each shard as it arrives.

    ``on_failure(sha256, reason, permanent)`` is called for each image that failed, as results
    arrive. Returns the sha256 extracted. On an error or Ctrl-C, the shards already recorded
    stay in the cache; tasks not started are cancelled (running ones finish, and the next
    writer adopts or drops what they write).
    """
    run = uuid.uuid4().hex[:8]

    def submit(partition: Partition):
        return client.submit(extract_partition, partition, spec, fingerprint, targets,
                             batch_size, decode_workers,
                             key=f"extract-{run}-{partition.key[:16]}", pure=False,
                             resources=resources or None)

    extracted: list[str] = []
    total = sum(len(p.sha256) for p in partitions)
    with tqdm(total=total, unit="img", desc="extract (cluster)",
              disable=None if progress else True, dynamic_ncols=True) as bar, \
            contextlib.closing(_as_finished(client, map(submit, partitions),
                                            in_flight)) as finished:
        for result in finished:
            for part, shard in result.shards.items():
                writers[part].commit_written(shard)
            extracted += result.sha256
            for sha, (reason, permanent) in result.failures.items():
                on_failure(sha, reason, permanent)
            bar.update(len(result.sha256) + len(result.failures))
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
