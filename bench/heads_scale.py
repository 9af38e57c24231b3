"""Benchmark: ``pipeline run heads`` against the same fits in a plain loop (issue 22, item 4).

On a cache of synthetic 32x32 images (``bench.scale``'s images and configuration: the
repository's stages.yaml, ``weights: null``), runs the repository's scikit-learn heads (the
dense head left out unless ``--dense``; then the plain loop fits it with Keras) two ways, each
in a fresh process:

    pipeline    pipeline run heads --force (the configured scheduler, or --scheduler)
    plain loop  the same estimators (the same parameters and seeds, the sweep's draws
                included, behind the head's scaler and PCA where it has them) fitted one
                after another on in-memory arrays read once per feature setting through
                ``Project.features``, each scored on validation

and prints wall seconds, peak RSS (the command's own and the largest of its children's) and
the ratio of the two wall times, with one float32 copy of the largest training matrix for
scale.
The images and cache are made on first use (``--images`` synthetic images, about 70% of them
training rows) and reused. Run from the repository root:

    python -m bench.heads_scale --images 2860 --workdir /tmp/heads-scale
    python -m bench.heads_scale --project /tmp/scale/project-100000   # bench.scale's cache
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

from bench.peak_memory import TreePeak, children_peak_rss_mb, peak_rss_mb
from bench.scale import REPO, make_images, write_config


def prepare(workdir: Path, images: int) -> Path:
    """A project on ``images`` synthetic images with its features extracted; its config."""
    data = make_images(workdir / f"images-{images}", images)
    project = workdir / f"project-{images}"
    project.mkdir(parents=True, exist_ok=True)
    config = write_config(project, data)
    subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "extract", "-c", str(config),
                    "--no-progress"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return config


def heads_config(config: Path, dense: bool, scheduler: str | None,
                 all_epochs: bool = False, memory_budget_mb: int | None = None) -> Path:
    """``config`` with the dense head left out (unless ``dense``), ``scheduler`` and
    ``memory_budget_mb`` set where given; with ``all_epochs``, dense heads without early
    stopping (both loops then run the same epochs: early stopping on noisy validation stops
    them at different ones)."""
    document = yaml.safe_load(config.read_text(encoding="utf-8"))
    models = document["stages"]["heads"]["models"]
    if not dense:
        models.pop("dense", None)
    if all_epochs:
        for head in models.values():
            if head.get("kind") == "dense":
                head.setdefault("params", {})["patience"] = None
    if scheduler:
        document.setdefault("cluster", {})["scheduler"] = scheduler
    if memory_budget_mb:
        document["stages"]["heads"]["memory_budget_mb"] = memory_budget_mb
    suffix = ("-all-epochs" if all_epochs else "") + \
        (f"-{memory_budget_mb}mb" if memory_budget_mb else "")
    path = config.with_name(f"heads-{scheduler or 'configured'}-{int(dense)}{suffix}.yaml")
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def measure(mode: str, config: Path) -> dict:
    """Run one mode in a child process: wall seconds, peak RSS of it and of its children."""
    report = Path(os.environ.get("TMPDIR", "/tmp")) / f"heads-scale-{os.getpid()}.json"
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "bench.heads_scale", "--child", mode,
                              str(report), str(config)], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    with TreePeak(child.pid) as tree:
        _, stderr = child.communicate()
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(f"{mode} failed ({child.returncode}):\n"
                           f"{stderr.decode(errors='replace')[-3000:]}")
    measured = json.loads(report.read_text())
    report.unlink()
    return {"seconds": seconds, "tree_rss_mb": tree.peak_mb, **measured}


def _plain_keras_fit(trial, x, y, xv, yv) -> int:
    """The dense head as a user writes it with Keras on in-memory rows (already normalised
    per part by ``Project.features``): standardised with numpy, Dense-relu, Dropout, softmax,
    the trial's optimizer, learning rate, batch size, epochs and early stopping on validation
    accuracy; scored on validation. Returns the epochs it ran."""
    import keras
    import numpy as np

    params = trial.spec.config.dense_params(trial.spec.estimator_params())
    n_classes = int(max(y.max(), yv.max())) + 1
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-7
    x, xv = (x - mean) / std, (xv - mean) / std
    keras.utils.set_random_seed(trial.spec.seed)
    model = keras.Sequential([keras.Input((x.shape[1],)),
                              keras.layers.Dense(params.units, activation="relu"),
                              keras.layers.Dropout(params.dropout),
                              keras.layers.Dense(n_classes, activation="softmax")])
    model.compile(keras.optimizers.get({"class_name": params.optimizer,
                                        "config": {"learning_rate": params.learning_rate}}),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = [] if params.patience is None else [keras.callbacks.EarlyStopping(
        monitor="val_accuracy", mode="max", patience=params.patience,
        restore_best_weights=params.restore_best)]
    history = model.fit(x, y, batch_size=params.batch_size, epochs=params.epochs,
                        validation_data=(xv, yv), callbacks=stop, shuffle=True, verbose=0)
    float(np.mean(np.argmax(model.predict(xv, verbose=0), axis=1) == yv))
    return len(history.history["loss"])


def _plain_loop(config: Path) -> dict:
    """The configured trials fitted directly on arrays read once per feature setting: what a
    user writes by hand (scikit-learn's estimators; Keras for a dense head)."""
    import numpy as np

    from pipeline import Project
    from pipeline.config import load_config
    from pipeline.heads.trials import expand_trials

    project = Project(config)
    trials = list(expand_trials(load_config(config).stages.heads))
    arrays, fit_seconds, largest, epochs = {}, 0.0, 0, []
    for trial in trials:
        setting = (tuple(np.atleast_1d(trial.spec.setting("features"))),
                   trial.spec.setting("normalize"))
        if setting not in arrays:
            arrays[setting] = (project.features("train", list(setting[0]), setting[1]),
                               project.features("validation", list(setting[0]), setting[1]))
        (x, y), (xv, yv) = arrays[setting]
        largest = max(largest, x.nbytes)
        started = time.perf_counter()
        if trial.kind.name == "dense":
            epochs.append(_plain_keras_fit(trial, x, y, xv, yv))
        else:
            # the head's steps after its feature rows: [StandardScaler] -> [PCA] -> estimator
            model = trial.kind.pipeline(trial.spec)[1:]
            model.fit(x, y)
            float(np.mean(model.predict(xv) == yv))
        fit_seconds += time.perf_counter() - started
    # MiB, the unit of the peaks it is compared with
    return {"trials": len(trials), "fit_seconds": fit_seconds, "matrix_mb": largest / 2**20,
            "dense_epochs": epochs}


def _child(mode: str, report: str, config: str) -> None:
    measured = {}
    if mode == "plain":
        measured = _plain_loop(Path(config))
    else:
        from pipeline.cli import main
        code = main(["run", "heads", "--force", "-c", config, "--no-progress"])
        if code not in (0, None):
            sys.exit(code)
    Path(report).write_text(json.dumps({
        **measured,
        "rss_mb": peak_rss_mb(), "children_rss_mb": children_peak_rss_mb()}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--images", type=int, default=2860,
                       help="synthetic images to make and extract (default: 2,000 train rows)")
    where.add_argument("--project", type=Path, help="a bench.scale project folder to reuse")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/heads-scale"))
    parser.add_argument("--scheduler", help="cluster.scheduler for the pipeline run")
    parser.add_argument("--dense", action="store_true", help="keep the dense head")
    parser.add_argument("--all-epochs", action="store_true",
                        help="dense heads without early stopping, in both loops")
    parser.add_argument("--memory-budget", type=int, metavar="MB",
                        help="stages.heads.memory_budget_mb for the pipeline run (a dense head "
                             "whose features exceed it streams them from the cache)")
    parser.add_argument("--repeat", type=int, default=1)
    options = parser.parse_args()
    config = (options.project / "stages.yaml" if options.project
              else prepare(options.workdir, options.images))
    run_config = heads_config(config, options.dense, options.scheduler,
                              options.all_epochs, options.memory_budget)
    rows = []
    for _ in range(options.repeat):
        plain = measure("plain", run_config)
        piped = measure("pipeline", run_config)
        rows.append((plain, piped))
    matrix = rows[0][0]["matrix_mb"]
    print(f"{rows[0][0]['trials']} trials; largest training matrix {matrix:,.0f} MiB float32")
    if rows[0][0]["dense_epochs"]:
        print(f"plain loop's dense trials ran {rows[0][0]['dense_epochs']} epochs (the "
              f"pipeline's: its leaderboard's run folder, heads/<name>/history.json)")
    # A child's peak counts the pages it shared with its parent when forked: lscpu, which
    # joblib runs to count cores, shows the parent's size. It means memory only where the
    # children are a LocalCluster's workers.
    # The tree's peak: the summed RSS of the command and its children at any one time
    # (sampled), which is what a sweep that fits its dense trials in a child process holds.
    print("| run | plain loop (fits) / peak RSS | pipeline run heads / peak RSS (largest "
          "child) / process tree's peak | wall ratio | pipeline tree peak / matrix |")
    print("|---|---|---|---|---|")
    for i, (plain, piped) in enumerate(rows):
        print(f"| {i + 1} | {plain['seconds']:.2f} s ({plain['fit_seconds']:.2f} s) / "
              f"{plain['rss_mb']:,.0f} MiB | {piped['seconds']:.2f} s / "
              f"{piped['rss_mb']:,.0f} MiB ({piped['children_rss_mb']:,.0f} MiB) / "
              f"{piped['tree_rss_mb']:,.0f} MiB | "
              f"{piped['seconds'] / plain['seconds']:.2f}x | "
              f"{max(piped['rss_mb'], piped['tree_rss_mb']) / matrix:.1f}x |")


if __name__ == "__main__":
    main()
