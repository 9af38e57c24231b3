"""Reliability table: faults injected into real `pipeline run extract` processes, then counted.

Every fault runs `pipeline run extract` in a child process on a fresh cache with
``PIPELINE_FAULT`` set (cache/faults.py): SIGKILL at every writer and extract fault point at
its 1st to ``--max-pass``-th pass, Ctrl-C at every point, a full disk (ENOSPC) at every writer
point, and extractions started in pairs at the same moment on one cache. Each is followed by a
clean rerun; the cache is then compared with an uninterrupted run's: entries lost (an image
missing or its features different), entries duplicated (an image stored twice), temporary
files left. The bad-input corpus of the tests (tests/bad_inputs.py) is run too. A crash is an
exit code or a traceback that the fault does not explain.

    python -m bench.reliability --work /tmp/reliability

Takes about 10 minutes on 2 CPU cores (most of it is TensorFlow starting in each child).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from cache import FeatureStore
from cache.faults import POINTS
from pipeline.data.view import read_view
from pipeline.errors import EmptyClassWarning
from pipeline.extract.loop import FAULT_POINTS as EXTRACT_POINTS
from tests.support.bad_inputs import write_corpus
from tests.support.projects import REPO, extract, make_image_folder, tiny_document, write_config

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXPECTED_EXIT = {"kill": -signal.SIGKILL, "interrupt": 130, "enospc": 1}


def _extract_process(project: Path, cache_dir: str, fault: str | None, *overrides: str
                     ) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PIPELINE_FAULT", None)
    if fault:
        env["PIPELINE_FAULT"] = fault
    args = [sys.executable, "-m", "pipeline.cli", "run", "extract", "--no-progress",
            "-c", str(project / "stages.yaml"), "--set", f"cache.dir={cache_dir}"]
    for override in overrides:
        args += ["--set", override]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _count(project: Path, cache_dir: str, reference: dict[str, np.ndarray]) -> dict:
    """Rerun cleanly in this process, then compare the cache with ``reference``."""
    try:
        extract(project, f"cache.dir={cache_dir}")
        completed = 1
    except Exception as exc:  # noqa: BLE001 (any failure of the rerun is what we count)
        print(f"  rerun failed: {type(exc).__name__}: {exc}")
        completed = 0
    (store_dir,) = (project / cache_dir).glob("vgg16-*")
    store = FeatureStore(project / cache_dir, store_dir.name)
    rows = [sha for record in store.shards() for sha in record.sha256]
    present = [sha for sha in reference if sha in store]
    lost = len(reference) - len(present)
    if present:
        got = store.get(present)
        want = np.stack([reference[sha] for sha in present])
        lost += int((~np.isclose(got, want, rtol=1e-5, atol=1e-5).reshape(len(present), -1)
                     .all(axis=1)).sum())
    leftovers = [p for p in (project / cache_dir).rglob("*") if p.name.endswith(".tmp")]
    return {"completed": completed, "lost": lost, "duplicated": len(rows) - len(set(rows)),
            "leftovers": len(leftovers)}


def _faults(max_pass: int) -> list[tuple[str, str]]:
    points = [*POINTS, *EXTRACT_POINTS]
    faults = [("kill", f"{p}:{n}") for p in points for n in range(1, max_pass + 1)]
    faults += [("interrupt", f"{p}:2:interrupt") for p in points]
    faults += [("enospc", f"{p}:2:enospc") for p in POINTS]
    return faults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (emptied)")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--max-pass", type=int, default=5,
                        help="kill at each point's 1st..Nth pass (each point is passed "
                             "images/2 times a run)")
    parser.add_argument("--pairs", type=int, default=3,
                        help="how many times to start two extractions at once")
    args = parser.parse_args()
    warnings.simplefilter("ignore", EmptyClassWarning)  # a dozen images: splits are thin
    shutil.rmtree(args.work, ignore_errors=True)
    project = args.work / "project"
    per_class = -(-args.images // 3)
    make_image_folder(project / "data", {"cats": per_class, "dogs": per_class,
                                         "owls": args.images - 2 * per_class})
    write_config(project, tiny_document(batch_size=2, shard_size=2))
    clean = extract(project, "cache.dir=reference")
    reference_store = FeatureStore(project / "reference", clean.fingerprint)
    shas = reference_store.sha256s()
    reference = dict(zip(shas, reference_store.get(shas)))

    totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    started = time.perf_counter()
    for number, (kind, fault) in enumerate(_faults(args.max_pass)):
        cache_dir = f"cache-{number}"
        process = _extract_process(project, cache_dir, fault)
        _, err = process.communicate(timeout=600)
        crashed = process.returncode != EXPECTED_EXIT[kind] or "Traceback" in err
        counts = _count(project, cache_dir, reference)
        row = totals[kind]
        row["injected"] += 1
        row["crashes"] += int(crashed)
        for key, value in counts.items():
            row[key] += value
        if crashed or counts["lost"] or counts["duplicated"] or counts["leftovers"]:
            print(f"  {fault}: exit {process.returncode}, {counts}\n{err[-1500:]}")
        shutil.rmtree(project / cache_dir)

    for pair in range(args.pairs):
        cache_dir = f"cache-pair-{pair}"
        processes = [_extract_process(project, cache_dir, None, "cache.lock_timeout=-1")
                     for _ in range(2)]
        outputs = [p.communicate(timeout=600) for p in processes]
        crashed = sum(p.returncode != 0 or "Traceback" in err
                      for p, (_, err) in zip(processes, outputs))
        counts = _count(project, cache_dir, reference)
        row = totals["two at once"]
        row["injected"] += 1
        row["crashes"] += crashed
        for key, value in counts.items():
            row[key] += value
        shutil.rmtree(project / cache_dir)

    corpus_root = args.work / "corpus"
    corpus = write_corpus(corpus_root / "data", max_pixels=100_000)
    document = tiny_document()
    document["data"]["max_pixels"] = 100_000
    write_config(corpus_root, document)
    process = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "extract", "--no-progress", "-c",
         str(corpus_root / "stages.yaml")], env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=600)
    (view_file,) = (corpus_root / "cache").glob("vgg16-*/views/*.json")
    view = read_view(view_file)
    named = {s.path for s in view.skipped if corpus.bad.get(s.path, "\0") in s.reason}
    cached = {image.path for image in view.images}
    bad_row = totals["bad input files"]
    bad_row["injected"] = corpus.cases
    bad_row["completed"] = int(process.returncode == 3)
    bad_row["crashes"] = int(process.returncode not in (0, 3) or "Traceback" in process.stderr)
    bad_row["lost"] = len(corpus.good - cached) + len(set(corpus.bad) - named)

    print(f"\nreliability: {args.images} images, batches and shards of 2, "
          f"{time.perf_counter() - started:.0f} s")
    header = ("fault", "injected", "runs completed", "entries lost", "entries duplicated",
              "temp files left", "crashes")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for kind, row in totals.items():
        print(f"| {kind} | {row['injected']} | {row['completed']} | {row['lost']} | "
              f"{row['duplicated']} | {row['leftovers']} | {row['crashes']} |")
    print(f"\nbad input: {corpus.cases} files and folders tried, {len(cached)} cached, "
          f"{len(view.skipped)} named with their reason, exit code {process.returncode}; "
          f"lost counts good files not cached plus bad files not named with the right reason")


if __name__ == "__main__":
    main()
