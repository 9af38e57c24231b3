"""A disk that fills up during extraction: the failed shard leaves no trace, what was committed
before it stays, the error is one clear line, and the next run completes the cache exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cache import FeatureStore, faults
from cache.manifest import load_manifest
from pipeline.cli import main
from pipeline.config import load_config
from tests.support.projects import extract


def _store(project: Path, *overrides: str) -> FeatureStore:
    config = load_config(project / "stages.yaml", overrides)
    (path,) = config.cache.dir.glob("vgg16-*")
    return FeatureStore(config.cache.dir, path.name)


@pytest.mark.parametrize("point, recorded_after_failure, new_on_rerun", [
    ("shard.begin", 4, 8),        # the second shard cannot even be created
    ("shard.written", 4, 8),      # its data are written, the file cannot be completed
    # complete and renamed, half its manifest line written: the line is cut back, and the
    # shard, durable, counts as cached (readers and the next writer adopt it)
    ("manifest.partial", 8, 4),
])
def test_a_full_disk_leaves_the_cache_as_before_the_failed_shard(
        tiny_project: Path, monkeypatch, capsys, point: str, recorded_after_failure: int,
        new_on_rerun: int):
    config_file = str(tiny_project / "stages.yaml")
    faults.reset()
    monkeypatch.setenv(faults.ENV_VAR, f"{point}:2:enospc")  # the 2nd shard, and every later
    code = main(["run", "extract", "-c", config_file, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    assert "No space left on device" in line and "every shard committed before it is kept" \
        in line

    store = _store(tiny_project)
    manifest = load_manifest(store.path)
    assert manifest.damaged_lines == 0                         # no half line left behind
    assert [record.rows for record in manifest.shards.values()] == [4]  # the first shard
    assert len(store.sha256s()) == recorded_after_failure
    assert not [p for p in store.path.iterdir() if p.name.endswith(".tmp")]
    run_folder = max((tiny_project / "runs").iterdir())
    assert "failed: CacheWriteError" in (run_folder / "summary.txt").read_text()

    # space is back: the next run keeps everything committed and computes the rest once
    monkeypatch.delenv(faults.ENV_VAR)
    faults.reset()
    code = main(["run", "extract", "-c", config_file, "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and f"extract: {new_on_rerun} new, {12 - new_on_rerun} cached" in out
    store.refresh()
    shas = store.sha256s()
    assert len(shas) == len(set(shas)) == 12
    clean = extract(tiny_project, f"cache.dir={tiny_project / 'clean'}")
    reference = FeatureStore(tiny_project / "clean", clean.fingerprint)
    np.testing.assert_array_equal(store.get(shas), reference.get(shas))
