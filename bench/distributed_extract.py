"""Benchmark: extraction in one process vs on a 2-worker dask cluster on this machine.

Takes the first N images of a labelled folder (round-robin over classes) and, for ``--rounds``
rounds, runs ``pipeline run extract`` in a fresh process on a fresh cache:

1. in-process: ``cluster.scheduler: synchronous`` (TensorFlow uses every core);
2. cluster:    ``--scheduler`` pointing at a LocalCluster of 2 single-threaded worker
               processes started before the round, so their first partition builds the model
               (cold, as a newly started cluster would);
3. warm:       the same cluster again on another fresh cache (models already built).

It reports the extraction loop's seconds and images/s (``extract.inference_seconds`` of the
run's metrics.json), checks that the cluster's features equal the in-process ones, and times
decoding alone on one thread (read + JPEG decode + resize), the figure the paper estimate in
docs/benchmarks.md needs per CPU core.

    python -m bench.distributed_extract --data ../shared/data/flowers-1000 --images 256
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

from bench.extract_throughput import pick_images


def run_extract(project: Path, cache: str, *options: str) -> dict:
    """``pipeline run extract`` in a child process; its metrics.json."""
    runs = project / "runs"
    before = set(runs.iterdir()) if runs.exists() else set()
    subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "extract", "--no-progress",
                    "--force", "-c", str(project / "stages.yaml"), "--set",
                    f"cache.dir={cache}", *options], check=True, capture_output=True, text=True)
    (run,) = set(runs.iterdir()) - before
    return json.loads((run / "metrics.json").read_text())


def features(project: Path, cache: str) -> dict[str, np.ndarray]:
    from cache import FeatureStore
    (store_dir,) = (project / cache).glob("vgg16-*")
    store = FeatureStore(project / cache, store_dir.name)
    shas = sorted(store.sha256s())
    return dict(zip(shas, store.get(shas)))


def decode_rate(images: list[Path], size: int) -> float:
    """Images per second that one thread reads, decodes and resizes to ``size``."""
    import time

    from pipeline.data.decode import DecodeOptions, decode_file
    options = DecodeOptions(size=(size, size))
    started = time.perf_counter()
    for image in images:
        decode_file(image, options)
    return len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--weights", default="hed-bsds500")
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--partition", type=int, default=32,
                        help="images per task (stages.extract.shard_size)")
    args = parser.parse_args()

    import dask
    from distributed import LocalCluster

    from pipeline.cluster import SCHEDULER_HTTP, WORKER_ENVIRONMENT, environment_kept

    with tempfile.TemporaryDirectory() as folder:
        project = Path(folder)
        for image in pick_images(args.data, args.images):
            target = project / "data" / image.parent.name / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(image.resolve())
        (project / "stages.yaml").write_text(yaml.safe_dump({
            "data": {"root": "data", "image_size": [args.size, args.size]},
            "backbone": {"weights": args.weights},
            "stages": {"extract": {"batch_size": 32, "shard_size": args.partition}},
            "cluster": {"scheduler": "synchronous"}, "runs": {"dir": "runs"}}))
        rows = []
        for round_ in range(args.rounds):
            metrics = run_extract(project, f"single-{round_}")
            rows.append(("in-process", round_, metrics))
            # environment_kept: the nannies would leave the workers' one-thread settings in
            # this process's environment, and the next in-process run would inherit them
            with dask.config.set({"distributed.nanny.pre-spawn-environ": WORKER_ENVIRONMENT}), \
                    environment_kept():
                with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, scheduler_kwargs=SCHEDULER_HTTP,
                                  silence_logs=logging.ERROR) as local:
                    for mode in ("cluster (cold)", "cluster (warm)"):
                        cache = f"{mode.split()[1][1:-1]}-{round_}"
                        metrics = run_extract(project, cache, "--scheduler",
                                              local.scheduler_address)
                        rows.append((mode, round_, metrics))
            single, cold = features(project, f"single-{round_}"), \
                features(project, f"cold-{round_}")
            assert single.keys() == cold.keys()
            diff = max(float(np.abs(single[k] - cold[k]).max()) for k in single)
            print(f"round {round_}: max |cluster - in-process| feature difference {diff:.2e}")
            shutil.rmtree(project / f"single-{round_}")

        picked = pick_images(args.data, args.images)
        print(f"decoding alone, one thread: {decode_rate(picked, args.size):.0f} images/s")
        print(f"\n{args.images} images at {args.size}x{args.size}, weights {args.weights}, "
              f"partitions of {args.partition}")
        print("| mode | round | images | loop s | img/s |")
        print("|---|---|---|---|---|")
        for mode, round_, metrics in rows:
            print(f"| {mode} | {round_} | {metrics['extract.images_new']} | "
                  f"{metrics['extract.inference_seconds']:.1f} | "
                  f"{metrics['extract.images_per_second']:.1f} |")


if __name__ == "__main__":
    main()
