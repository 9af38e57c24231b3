"""Two processes on one cache: a second extraction, gc and verify while an extraction writes.

The first extraction runs in a child process and pauses at a fault point (``wait``) right after
handing its first batch to the writer: it holds the write lock and has uncommitted rows. Other
commands then run against the cache at that exact moment; afterwards the first one is released
and the cache must end complete, with every image exactly once and nothing damaged.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from cache.manifest import load_manifest
from pipeline.cli import main
from pipeline.data.scan import scan_dataset
from tests.support.processes import PausedExtraction
from tests.support.projects import REPO, context, make_image_folder

IMAGES = 12


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _assert_complete_and_once(project: Path, unreferenced: int = 0) -> None:
    """Every image of the data folder cached exactly once, plus ``unreferenced`` older
    entries; nothing missing, no temporary file left."""
    ctx = context(project)
    store = ctx.store
    wanted = {image.sha256 for image in scan_dataset(ctx.config.data).images}
    rows = [sha for record in load_manifest(store.path).shards.values()
            for sha in record.sha256]
    assert len(rows) == len(set(rows)) == len(wanted) + unreferenced
    assert wanted <= set(rows) and store.missing(sorted(wanted)) == []
    assert not [p for p in store.path.rglob("*") if p.name.endswith(".tmp")]


def test_a_second_extraction_refuses_with_a_clear_message(tiny_project: Path, capsys):
    first = PausedExtraction(tiny_project)
    config_file = str(tiny_project / "stages.yaml")
    code, _, err = _run(capsys, "run", "extract", "-c", config_file, "--no-progress",
                        "--set", "cache.lock_timeout=0")
    assert code == 1
    assert err.startswith("error: cache ") and f"pid {first.process.pid}" in err
    assert "cache.lock_timeout" in err and err.count("\n") == 1
    code, out, err = first.finish()
    assert code == 0, err
    assert f"{IMAGES} new, 0 cached" in out
    _assert_complete_and_once(tiny_project)


def test_a_second_extraction_waits_and_then_finds_everything_cached(tiny_project: Path):
    first = PausedExtraction(tiny_project)
    second = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "extract", "--no-progress", "-c",
         str(tiny_project / "stages.yaml"), "--set", "cache.lock_timeout=120"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    # the second says it waits, and for whom, before the first is let go
    deadline = time.monotonic() + 120
    seen = ""
    while "CacheLockWaitWarning" not in seen:
        assert second.poll() is None and time.monotonic() < deadline, second.communicate()
        seen += second.stderr.readline()
    assert f"pid {first.process.pid}" in seen and "waiting up to 120 s" in seen
    code, out, err = first.finish()
    assert code == 0, err
    out2, err2 = second.communicate(timeout=300)
    assert second.returncode == 0, err2
    assert f"0 new, {IMAGES} cached" in out2     # it used what the first one wrote
    _assert_complete_and_once(tiny_project)


def test_verify_and_gc_are_safe_against_a_running_extraction(tiny_project: Path, capsys):
    config_file = str(tiny_project / "stages.yaml")
    # finished runs leave committed shards, a view, and one entry no view references
    assert _run(capsys, "run", "extract", "-c", config_file, "--no-progress")[0] == 0
    (tiny_project / "data" / "cats" / "img_00.png").unlink()
    assert _run(capsys, "run", "extract", "-c", config_file, "--no-progress")[0] == 0
    make_image_folder(tiny_project / "data", {"newts": 4}, start_seed=500)  # four to extract
    first = PausedExtraction(tiny_project)
    code, out, _ = _run(capsys, "cache", "verify", "-c", config_file)
    assert code == 0 and "checked: ok" in out
    # dry run, no lock needed: the running extraction's committed shard is newer than every
    # view, so it is kept whatever the views say
    code, out, _ = _run(capsys, "cache", "gc", "-c", config_file)
    assert code == 0 and "would remove 1 " in out and "kept 4 newer than every dataset view" \
        in out
    code, _, err = _run(capsys, "cache", "gc", "--apply", "-c", config_file)
    assert code == 1 and "is being written by" in err and f"pid {first.process.pid}" in err
    code, out, err = first.finish()
    assert code == 0, err
    assert "4 new, 11 cached" in out
    code, out, _ = _run(capsys, "cache", "verify", "-c", config_file)
    assert code == 0 and "16 entries checked: ok" in out
    _assert_complete_and_once(tiny_project, unreferenced=1)
    # with the extraction finished, gc takes the deleted image's entry and nothing else
    code, out, _ = _run(capsys, "cache", "gc", "--apply", "-c", config_file)
    assert code == 0 and "removed 1 " in out
    _assert_complete_and_once(tiny_project)
