"""Crash suite: `pipeline run extract` killed with SIGKILL at 20 seeded moments (inside a
shard write, between the rename and the manifest, half-way through a manifest line, between
batches), or interrupted as by Ctrl-C, then run again: every image is cached exactly once,
every feature equals the uninterrupted run's, and no temporary file is left behind.

Each moment is a named fault point and the how-many-th time the process passes it
(cache/faults.py), drawn from a fixed seed, so a failure names a moment that can be replayed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cache import FeatureStore
from cache.faults import POINTS
from pipeline.extract.loop import FAULT_POINTS as EXTRACT_POINTS
from tests.support.processes import PausedExtraction
from tests.support.projects import extract, make_image_folder, tiny_document, write_config

IMAGES = 12  # in batches of 2 and shards of 2 rows: every point is passed 6 times a run


def _moments(count: int = 20, seed: int = 2026) -> list[str]:
    """``point:n`` for every point at n = 1, 2, 3, then seeded extras, in a seeded order."""
    rng = random.Random(seed)
    points = [*POINTS, *EXTRACT_POINTS]
    moments = [f"{p}:{n}" for p in points for n in (1, 2, 3)]
    while len(moments) < count:
        moment = f"{rng.choice(points)}:{rng.randint(4, 6)}"
        if moment not in moments:
            moments.append(moment)
    rng.shuffle(moments)
    return moments[:count]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """12 images, and the features an uninterrupted run computes for them."""
    root = tmp_path_factory.mktemp("crash")
    make_image_folder(root / "data", {"cats": 4, "dogs": 4, "owls": 4})
    write_config(root, tiny_document(batch_size=2, shard_size=2))
    result = extract(root, "cache.dir=reference")
    store = FeatureStore(root / "reference", result.fingerprint)
    shas = store.sha256s()
    assert len(shas) == IMAGES
    return root, dict(zip(shas, store.get(shas)))


def _crash(root: Path, cache_dir: str, fault: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIPELINE_FAULT": fault}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "extract", "--no-progress",
         "-c", str(root / "stages.yaml"), "--set", f"cache.dir={cache_dir}"],
        env=env, capture_output=True, text=True, timeout=300)


def _assert_exact(root: Path, cache_dir: str, reference: dict[str, np.ndarray]) -> None:
    resumed = extract(root, f"cache.dir={cache_dir}")
    assert resumed.new + resumed.cached == IMAGES
    store = FeatureStore(root / cache_dir, resumed.fingerprint)
    assert sum(s.rows for s in store.shards()) == IMAGES  # every image exactly once
    assert sorted(store.sha256s()) == sorted(reference)
    got = store.get(list(reference))
    np.testing.assert_allclose(got, np.stack(list(reference.values())), rtol=1e-5, atol=1e-5)
    leftovers = [p.name for p in (root / cache_dir).rglob("*")
                 if p.name.endswith(".tmp") or p.name.endswith(".unreadable")]
    assert not leftovers


@pytest.mark.slow
@pytest.mark.parametrize("fault", _moments())
def test_sigkill_at_a_seeded_moment_then_rerun_is_exact(project, fault: str):
    root, reference = project
    cache_dir = f"cache-{fault.replace(':', '-').replace('.', '-')}"
    killed = _crash(root, cache_dir, fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    _assert_exact(root, cache_dir, reference)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["shard.written:2:interrupt", "manifest.partial:3:interrupt",
                                   "extract.batch:4:interrupt"])
def test_ctrl_c_at_a_moment_stops_cleanly_and_keeps_finished_work(project, fault: str):
    root, reference = project
    cache_dir = f"cache-int-{fault.split(':')[0].replace('.', '-')}"
    stopped = _crash(root, cache_dir, fault)
    assert stopped.returncode == 130
    assert stopped.stderr.strip().endswith(
        "interrupted: finished batches were saved to the cache; run again to resume")
    assert "Traceback" not in stopped.stderr
    _assert_exact(root, cache_dir, reference)


@pytest.mark.slow
def test_a_real_sigint_between_batches_stops_cleanly(project):
    root, reference = project
    paused = PausedExtraction(root, "cache.dir=cache-sigint")  # after its first batch
    paused.process.send_signal(signal.SIGINT)                   # what Ctrl-C sends
    _, err = paused.process.communicate(timeout=300)
    assert paused.process.returncode == 130
    assert err.strip().endswith(
        "interrupted: finished batches were saved to the cache; run again to resume")
    assert "Traceback" not in err
    _assert_exact(root, "cache-sigint", reference)
