"""Benchmark: the dense head on 2,000 cached features, and a sweep with dask vs serial.

1. dense:  the reference recipe's dense head (Flatten, Dense 256, Dropout 0.5, RMSprop 2e-5,
           batch 20, 30 epochs, no early stopping) on 2,000 training and 1,000 validation rows
           of (4, 4, 512) features read from a feature cache, as in the reference recipe's
           cats-vs-dogs setting. The rows are the cached flowers-1000 features, repeated with a
           little noise to reach 2,000 + 1,000 (the fit's cost does not depend on their values).
2. sweep:  ``pipeline run heads`` with a sweep of SWEEP_TRIALS trials over several head types on
           the flowers-1000 cache, on a dask LocalCluster (one single-threaded worker per core),
           then with ``cluster.scheduler: synchronous`` (one trial after another, in process)
           with the libraries' own threading, and again limited to one thread as each dask
           worker is; each in a fresh process. Reports the sweep's wall time, speed-ups, best
           validation and test accuracy.

The flowers-1000 features must be cached first (the script runs ``pipeline run extract`` if
they are not: about 70 s). Run from the repository root:

    python -m bench.heads_sweep --data ../shared/data/flowers-1000 --work /tmp/heads-bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.dense_head import SOURCE_HEAD

SWEEP = {
    "logreg": {"kind": "logistic_regression", "scale": True,
               "sweep": {"params": {"features": ["gap", "flatten"], "C": [0.01, 0.1, 1.0]}}},
    "svm": {"kind": "linear_svm", "features": "gap", "scale": True,
            "sweep": {"params": {"C": [0.001, 0.01, 0.1]}}},
    "sgd": {"kind": "sgd", "features": "gap", "scale": True,
            "sweep": {"params": {"alpha": [0.0001, 0.001, 0.01, 0.1]}}},
    "knn": {"kind": "knn", "features": "gap", "scale": True,
            "sweep": {"params": {"n_neighbors": [3, 7, 15]}}},
    "forest": {"kind": "random_forest", "features": "gap",
               "sweep": {"params": {"n_estimators": [100, 300]}}},
    "extra": {"kind": "extra_trees", "features": "gap",
              "sweep": {"params": {"n_estimators": [100, 300]}}},
    "boosting": {"kind": "gradient_boosting", "features": "gap",
                 "sweep": {"params": {"learning_rate": [0.05, 0.1]}}},
    "mlp": {"kind": "mlp", "features": "gap", "scale": True,
            "sweep": {"params": {"alpha": [0.0001, 0.01]}}},
    "dense": {**SOURCE_HEAD, "sweep": {"params": {"learning_rate": [2e-5, 1e-4]}}},
}
SWEEP_TRIALS = 6 + 3 + 4 + 3 + 2 + 2 + 2 + 2 + 2


def write_config(work: Path, data: Path, scheduler: str, exclude: tuple[str, ...] = ()) -> Path:
    """A stages.yaml for the flowers cache under ``work`` with the sweep above."""
    document = {
        "data": {"root": str(data.resolve()), "image_size": [150, 150]},
        "backbone": {"weights": "hed-bsds500"},
        "cache": {"dir": str(work / "cache")},
        "stages": {"heads": {"models": {k: v for k, v in SWEEP.items() if k not in exclude}}},
        "runs": {"dir": str(work / "runs")},
        "cluster": {"scheduler": scheduler},
    }
    path = work / f"stages-{scheduler}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


# What dask sets in each worker, so that the serial run can be compared like for like.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


def pipeline_run(config: Path, *stages: str, env: dict | None = None,
                 overrides: tuple[str, ...] = ()) -> tuple[float, dict]:
    """Wall seconds of ``pipeline run STAGES`` in a fresh process, and its metrics.json."""
    started = time.perf_counter()
    sets = [arg for setting in overrides for arg in ("--set", setting)]
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", *stages, "-c",
                          str(config), "--no-progress", *sets], check=True, capture_output=True,
                         text=True, env={**os.environ, **(env or {})}).stdout
    seconds = time.perf_counter() - started
    run_folder = Path(out.strip().splitlines()[-1].removeprefix("run folder: "))
    print(out, file=sys.stderr)
    return seconds, json.loads((run_folder / "metrics.json").read_text())


def dense_seconds(config: Path, rows: int = 2000, validation_rows: int = 1000) -> dict:
    """Seconds to fit the dense head on ``rows`` cached feature rows (run in this process)."""
    import numpy as np

    from pipeline.config import HeadConfig, load_config
    from pipeline.context import RunContext
    from pipeline.heads.splits import LabelledSplit, load_split
    from pipeline.heads.trial import TrialSpec
    from pipeline.heads.trials import Trial

    ctx = RunContext(load_config(config))
    store, view = ctx.store, ctx.require_view()
    started = time.perf_counter()
    base = [load_split(store, view, s) for s in ("train", "validation", "test")]
    read_seconds = time.perf_counter() - started
    x = np.concatenate([b.x for b in base])
    y = np.concatenate([b.y for b in base])
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(x), rows + validation_rows)
    noisy = x[pick] + rng.normal(0, 0.01, x[pick].shape).astype(np.float32)
    train = LabelledSplit("train", noisy[:rows], y[pick[:rows]], ())
    validation = LabelledSplit("validation", noisy[rows:], y[pick[rows:]], ())
    spec = TrialSpec("dense", 0, HeadConfig(**SOURCE_HEAD))
    # TensorFlow's import is paid once per process (or dask worker), not per fit: timed apart
    started = time.perf_counter()
    import pipeline.nn.runtime  # noqa: F401
    import_seconds = time.perf_counter() - started
    fitted = Trial(spec).fit(train, validation, n_classes=len(view.classes))
    return {"fit_seconds": fitted.fit_seconds, "read_seconds": read_seconds,
            "tensorflow_import_seconds": import_seconds,
            "epochs": len(fitted.history["loss"]), "rows": rows,
            "validation_rows": validation_rows, "feature_shape": list(x.shape[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/flowers-1000"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/heads-bench"))
    parser.add_argument("--skip-dense", action="store_true",
                        help="skip the dense-head timing on 2,000 rows")
    parser.add_argument("--exclude", default="", help="heads of SWEEP to leave out, e.g. dense")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    exclude = tuple(h for h in args.exclude.split(",") if h)
    local = write_config(args.work, args.data, "local", exclude)
    serial = write_config(args.work, args.data, "synchronous", exclude)
    extract_seconds, _ = pipeline_run(local, "extract")  # a no-op when already cached

    rows = [("pipeline run extract first", f"{extract_seconds:.1f} s", "a no-op when cached")]
    if not args.skip_dense:
        dense = subprocess.run(
            [sys.executable, "-m", "bench.heads_sweep", "--dense-only", str(local)], check=True,
            capture_output=True, text=True).stdout
        d = json.loads(dense.strip().splitlines()[-1])
        rows.append(("dense head, 30 epochs, 2,000 rows", f"{d['fit_seconds']:.1f} s",
                     f"{d['epochs']} epochs, +{d['validation_rows']} validation rows, "
                     f"{tuple(d['feature_shape'])}; TensorFlow import "
                     f"{d['tensorflow_import_seconds']:.1f} s apart; goal < 15 s"))
    parallel_seconds, parallel = pipeline_run(local, "heads")
    serial_seconds, serial_metrics = pipeline_run(serial, "heads")
    single_seconds, single = pipeline_run(serial, "heads", env=ONE_THREAD)
    for name, seconds, metrics in (("dask LocalCluster", parallel_seconds, parallel),
                                   ("one after another", serial_seconds, serial_metrics),
                                   ("one after another, 1 thread", single_seconds, single)):
        rows.append((f"sweep, {metrics['heads.trials']} trials, {name}",
                     f"{metrics['heads.sweep_seconds']:.1f} s",
                     f"whole command {seconds:.1f} s; best {metrics['heads.best.name']}: "
                     f"val {metrics['heads.best.val_accuracy']:.4f}, "
                     f"test {metrics['heads.best.test_accuracy']:.4f}"))
    for name, metrics in (("serial", serial_metrics), ("serial 1 thread", single)):
        speedup = metrics["heads.sweep_seconds"] / parallel["heads.sweep_seconds"]
        rows.append((f"sweep speed-up, dask vs {name}", f"{speedup:.2f}x", "goal >= 1.7x"))
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>9}  notes")
    for measure, value, notes in rows:
        print(f"{measure:<{width}}  {value:>9}  {notes}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--dense-only":
        print(json.dumps(dense_seconds(Path(sys.argv[2]))))
    else:
        main()
