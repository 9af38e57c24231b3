"""Extraction and sweeps on a dask.distributed cluster: two worker processes on loopback.

The cluster's workers each have one ``GPU`` resource (dask counts it; no GPU is used), so the
tests also exercise ``cluster.worker_resources``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import dask
import numpy as np
import pytest

from cache import FeatureStore, faults
from cache.manifest import load_manifest
from pipeline.cluster import SCHEDULER_HTTP, WORKER_ENVIRONMENT, scheduler_client
from pipeline.config import load_config
from pipeline.errors import SchedulerUnreachableError
from tests.support.projects import (
    context,
    extract,
    make_image_folder,
    run_named,
    tiny_document,
    write_config,
)

IMAGES = 12


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ": WORKER_ENVIRONMENT}):
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          resources={"GPU": 1}, dashboard_address=None,
                          scheduler_kwargs=SCHEDULER_HTTP, silence_logs=logging.ERROR) as local:
            with Client(local) as client:
                yield local, client


@pytest.fixture
def project(tmp_path: Path) -> Path:
    make_image_folder(tmp_path / "data", {"cats": 4, "dogs": 4, "owls": 4})
    (tmp_path / "data" / "owls" / "broken.jpg").write_bytes(b"not a picture")
    write_config(tmp_path, tiny_document(batch_size=2, shard_size=4))
    return tmp_path


def _on(cluster, project: Path, *overrides: str):
    local, _ = cluster
    return extract(project, f"cluster.scheduler={local.scheduler_address}",
                   "cluster.worker_resources={GPU: 1}", *overrides)


def _reference(project: Path) -> dict[str, np.ndarray]:
    result = extract(project, "cache.dir=single")
    store = FeatureStore(project / "single", result.fingerprint)
    shas = store.sha256s()
    return dict(zip(shas, store.get(shas)))


def _assert_exact(store: FeatureStore, reference: dict[str, np.ndarray],
                  atol: float = 1e-6) -> None:
    store.refresh()
    rows = [sha for record in load_manifest(store.path).shards.values() for sha in record.sha256]
    assert sorted(rows) == sorted(reference)                   # every image exactly once
    np.testing.assert_allclose(store.get(list(reference)), np.stack(list(reference.values())),
                               rtol=1e-5, atol=atol)
    assert not [p.name for p in store.path.iterdir() if p.name.endswith(".tmp")]


def test_distributed_extraction_equals_the_single_process_one(cluster, project: Path):
    result = _on(cluster, project)
    assert (result.new, result.cached) == (IMAGES, 0)
    assert [(s.path, s.reason) for s in result.skipped] == \
        [("owls/broken.jpg", "not an image (unknown format)")]
    store = FeatureStore(result.store_path.parent, result.fingerprint)
    assert all(s.name.startswith("shard-p") for s in store.shards())   # written by workers
    assert sorted(s.rows for s in store.shards()) == [1, 3, 4, 4]  # 13 files, one bad
    _assert_exact(store, _reference(project))
    rejects = (store.path / "rejects.jsonl").read_text()
    assert "not an image" in rejects                     # the client recorded the bad file
    again = _on(cluster, project)                       # nothing missing: no task at all
    assert (again.new, again.cached) == (0, IMAGES)


def test_distributed_extraction_of_taps_equals_the_single_process_one(cluster, project: Path):
    taps = "backbone.taps=[block1_conv2.gap, block3_pool.gmp]"
    result = _on(cluster, project, taps)
    assert (result.new, result.cached) == (IMAGES, 0)
    ctx, single = context(project, taps), context(project, taps, "cache.dir=single")
    extract(project, taps, "cache.dir=single")
    for part, store in ctx.stores.items():
        reference = single.stores[part]
        shas = reference.sha256s()
        assert len(shas) == IMAGES
        assert all(s.name.startswith("shard-p") for s in store.shards())  # written by workers
        # a mean over a whole feature map sums in another order on a one-thread worker
        _assert_exact(store, dict(zip(shas, reference.get(shas))), atol=1e-5)
    # adding a tap on the cluster computes only it; the others stay as they were
    before = {part: sorted(s.name for s in store.shards())
              for part, store in ctx.stores.items()}
    more = _on(cluster, project, "backbone.taps=[block1_conv2.gap, block3_pool.gmp, "
                                 "block2_conv1.gmp]")
    assert (more.new, more.cached) == (IMAGES, 0)  # every image lacked the new tap
    assert len(context(project, "backbone.taps=[block2_conv1.gmp]").stores["block2_conv1.gmp"]) \
        == IMAGES
    for part, store in ctx.stores.items():
        store.refresh()
        assert sorted(s.name for s in store.shards()) == before[part]


def test_a_worker_killed_mid_partition_and_the_run_still_exact(cluster, project: Path):
    local, client = cluster
    once = project / "one-worker-dies"
    # every worker gets the fault; the first to reach it claims the token and dies right
    # after writing its shard's temporary file, before the rename
    client.run(faults.inject, "shard.written:1:kill", str(once))
    try:
        result = _on(cluster, project)
    finally:
        client.run(faults.inject, None)
    assert once.exists()                                 # a worker did die mid-partition
    assert result.new == IMAGES
    _assert_exact(FeatureStore(result.store_path.parent, result.fingerprint),
                  _reference(project))
    client.wait_for_workers(2, timeout=120)              # the nanny restarted it


def _age(folder: Path) -> None:
    """Every file under ``folder`` last changed long ago: the hash state trusts its records."""
    for path in folder.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(10**18, 10**18))


def test_the_client_reads_no_image_and_workers_hash_what_the_state_cannot_vouch_for(
        cluster, project: Path, monkeypatch):
    from pipeline.data import batches, scan

    _age(project / "data")
    reference = _reference(project)  # in this process, before reading is forbidden here

    def forbidden(*args, **kwargs):
        raise AssertionError("the client read an image")

    monkeypatch.setattr(scan, "sha256_file", forbidden)
    monkeypatch.setattr(batches, "decode_file", forbidden)
    result = _on(cluster, project)
    assert (result.new, result.cached, len(result.skipped)) == (IMAGES, 0, 1)
    _assert_exact(FeatureStore(result.store_path.parent, result.fingerprint), reference)
    # what the workers hashed is in the client's hash state: a run in this process, and one
    # whose scheduler does not exist, find every file vouched for and cached (the broken one
    # again refused) and neither reads nor connects
    for where in ([], ["cluster.scheduler=tcp://127.0.0.1:9"]):
        again = extract(project, *where)
        assert (again.new, again.cached, len(again.skipped)) == (0, IMAGES, 1)
    # a tap added: every file is vouched for (nothing to hash), every image lacks the tap,
    # and the partitions go to the workers without the client reading an image
    tapped = _on(cluster, project, "backbone.taps=[block1_conv2.gap]")
    assert (tapped.new, tapped.cached, len(tapped.skipped)) == (IMAGES, 0, 1)


def test_a_worker_killed_after_hashing_and_the_run_still_exact(cluster, project: Path):
    local, client = cluster
    once = project / "one-worker-dies"
    client.run(faults.inject, "cluster.hashed:1:kill", str(once))
    try:
        result = _on(cluster, project)
    finally:
        client.run(faults.inject, None)
    assert once.exists()                                 # a worker did die with its hashes
    assert (result.new, len(result.skipped)) == (IMAGES, 1)
    _assert_exact(FeatureStore(result.store_path.parent, result.fingerprint),
                  _reference(project))
    client.wait_for_workers(2, timeout=120)


def test_sweep_on_the_scheduler_equals_the_serial_one_in_order(cluster, cached_project):
    local, _ = cluster
    heads = {"knn": {"kind": "knn", "features": "gap",
                     "sweep": {"params": {"n_neighbors": [1, 3, 5]}}},
             "logreg": {"kind": "logistic_regression", "features": "gap",
                        "sweep": {"params": {"C": [0.1, 1.0]}}}}
    project = cached_project(heads)

    def leaderboard(*overrides: str) -> list[dict]:
        config = load_config(project / "stages.yaml", overrides)
        run, _ = run_named(config, "heads")
        rows = json.loads((run.path / "leaderboard.json").read_text())
        return [{k: v for k, v in row.items() if k != "fit_seconds"} for row in rows]

    assert leaderboard(f"cluster.scheduler={local.scheduler_address}") == \
        leaderboard("cluster.scheduler=synchronous")


@pytest.mark.parametrize("address, words", [
    ("tcp://host:notaport", "not a dask scheduler address.*notaport"),
    ("tcp://host", "not a dask scheduler address.*missing port"),
    ("foo://host:8786", "not a dask scheduler address.*unknown scheme 'foo'"),
])
def test_a_malformed_scheduler_address_is_refused_before_connecting(address, words,
                                                                    monkeypatch):
    import distributed

    def connect(*args, **kwargs):
        raise AssertionError("a malformed address must be refused without connecting")

    monkeypatch.setattr(distributed, "Client", connect)
    with pytest.raises(SchedulerUnreachableError, match=words):
        with scheduler_client(address, timeout="2s"):
            pass


def test_an_unreachable_scheduler_is_one_clear_error():
    with pytest.raises(SchedulerUnreachableError, match="no dask scheduler answered"):
        with scheduler_client("tcp://127.0.0.1:9", timeout="2s"):
            pass


def test_a_worker_with_another_backbone_refuses(project: Path):
    from pipeline.errors import WorkerMismatchError
    from pipeline.extract.cluster import _worker_inference
    spec = context(project).spec
    with pytest.raises(WorkerMismatchError, match="computes backbone vgg16-.*the client "
                                                  "vgg16-0000000000000000"):
        _worker_inference(spec, "vgg16-0000000000000000")


def test_a_local_sweep_cluster_leaves_this_process_environment_alone():
    # distributed's nannies write the workers' one-thread settings into os.environ of the
    # process that starts them; the pipeline's later stages must not inherit them
    from pipeline.cluster import sweep_client
    from pipeline.config import ClusterConfig
    before = dict(os.environ)
    with sweep_client(ClusterConfig(scheduler="local", workers=1)) as client:
        assert dict(os.environ) == before
        # (a lambda runs on the worker; os.environ.get would travel with this process's copy)
        assert client.run(lambda: os.environ.get("TF_NUM_INTRAOP_THREADS")) == \
            {address: "1" for address in client.scheduler_info()["workers"]}
    assert dict(os.environ) == before


def test_a_local_sweep_cluster_says_nothing_of_a_taken_dashboard_port():
    # The scheduler serves HTTP (health, metrics) even with the dashboard off, on port 8787
    # unless told otherwise; where that port is taken dask moved to another one and warned
    # ("Port 8787 is already in use"), on the user's terminal, about a server nobody uses.
    import socket
    import warnings

    from pipeline.cluster import sweep_client
    from pipeline.config import ClusterConfig
    with socket.socket() as taken:
        try:
            taken.bind(("127.0.0.1", 8787))
            taken.listen()
        except OSError:
            pass  # someone else holds it: the case under test all the same
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with sweep_client(ClusterConfig(scheduler="local", workers=1)) as client:
                assert client.submit(abs, -1).result() == 1
    assert [str(w.message) for w in caught if "already in use" in str(w.message)] == []


def test_resources_no_worker_offers_are_an_error_not_a_silent_wait(cluster, project: Path):
    from pipeline.errors import NoSuitableWorkerError
    with pytest.raises(NoSuitableWorkerError, match="no worker offers them .*GPU"):
        _on(cluster, project, "cluster.worker_resources={TPU: 1}")
