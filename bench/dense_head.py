"""Benchmark: the dense head's optimizer, learning rate and input scaling, on a real cache.

Fits the dense head on the cached features of a project (``-c stages.yaml``, extracted first
with ``pipeline run extract``) on two inputs: the (h, w, c) output tensor flattened, and the
project's taps power-normalised. Two tables:

- ``grid``: each optimizer and learning rate of a grid, the inputs standardised as the head
  does by default (each feature centred, each part scaled as a whole), batch 32, up to 50
  epochs with early stopping on validation accuracy (patience 10, best epoch restored);
- ``ablation``: what made the head learn, one change at a time from the reference recipe's
  recipe (RMSprop 2e-5, batch 20, 30 epochs, unscaled) to the default (Adam 1e-3, batch 32,
  up to 50 epochs, patience 10, scaled per part), and scaling per feature (scikit-learn's
  StandardScaler's rule) against per part on the same cache;
- ``linear``: the logistic regression on the taps with each of those scalings.

The reference is the repository's logistic regression on the same taps (power, newton-cg, C
chosen on validation), which the dense head should come within 2 points of. Each setting is
fitted with ``--seeds`` seeds: mean and spread of validation accuracy, epochs run and fit
seconds. Selection is on validation only; the test split is not read.

    python -m bench.dense_head -c /tmp/flowers/stages.yaml [--tables grid ablation]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import numpy as np

GRID = {"adam": [1e-4, 3e-4, 1e-3, 3e-3], "rmsprop": [1e-4, 3e-4, 1e-3],
        "sgd": [1e-2, 3e-2]}
SOURCE_RECIPE = {"optimizer": "rmsprop", "learning_rate": 2e-5, "batch_size": 20,
                 "epochs": 30, "patience": None}
#: The reference recipe's dense head as a head of stages.yaml: what ``kind: dense`` trained
#: before issue 20 (the other benchmarks' baseline).
SOURCE_HEAD = {"kind": "dense", "features": "flatten", "normalize": "none", "scale": False,
               "params": SOURCE_RECIPE}
DEFAULT = {"optimizer": "adam", "learning_rate": 1e-3, "batch_size": 32, "epochs": 50,
           "patience": 10}
#: (label, scaling, params): scaling is none, part (the head's) or feature
ABLATION = [
    ("source recipe", "none", SOURCE_RECIPE),
    ("source recipe, scaled per part", "part", SOURCE_RECIPE),
    ("the default, unscaled", "none", DEFAULT),
    ("the default, scaled per feature", "feature", DEFAULT),
    ("the default (scaled per part)", "part", DEFAULT),
]


def load_splits(config_path: Path):
    """(train, validation, n_classes, taps) of the project, every cached part in memory."""
    from pipeline.config import load_config
    from pipeline.context import RunContext
    from pipeline.heads.splits import load_split

    ctx = RunContext(load_config(config_path))
    view = ctx.require_view()
    stores = ctx.stores
    return (load_split(stores, view, "train"), load_split(stores, view, "validation"),
            len(view.classes), tuple(ctx.spec.taps))


def _per_feature_statistics(parts, normalize: str, x) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of every feature on its own (StandardScaler's rule)."""
    from pipeline.heads.features import FeatureRows

    rows = FeatureRows(parts, normalize).transform(x).astype(np.float64)
    variance = rows.var(axis=0)
    variance[variance < 1e-12] = 1.0
    return rows.mean(axis=0).astype(np.float32), variance.astype(np.float32)


@contextlib.contextmanager
def _scaling_per_feature(on: bool):
    """The dense head's statistics per feature instead of per part, while inside (a
    comparison only this benchmark makes; the head has one rule)."""
    import pipeline.heads.dense as dense

    kept = dense.standardization_statistics
    if on:
        dense.standardization_statistics = _per_feature_statistics
    try:
        yield
    finally:
        dense.standardization_statistics = kept


def fit_dense(train, validation, n_classes: int, seed: int, features, normalize: str,
              scaling: str, params: dict) -> tuple[float, int, float]:
    """(validation accuracy, epochs run, fit seconds) of one dense head; ``scaling`` is
    none, part or feature."""
    from pipeline.config import HeadConfig
    from pipeline.heads.trial import TrialSpec
    from pipeline.heads.trials import Trial

    spec = TrialSpec("dense", 0, HeadConfig(kind="dense", features=features,
                                            normalize=normalize, scale=scaling != "none",
                                            params=params), seed=seed)
    with _scaling_per_feature(scaling == "feature"):
        fitted = Trial(spec).fit(train, validation, n_classes)
    accuracy = float(np.mean(fitted.predict(validation.x) == validation.y))
    return accuracy, len(fitted.history["loss"]), fitted.fit_seconds


def logistic_reference(train, validation, taps: tuple[str, ...]) -> tuple[float, float]:
    """(best validation accuracy, its C) of the repository's logistic regression on the taps."""
    from sklearn.linear_model import LogisticRegression

    from pipeline.heads.features import FeatureRows

    rows = FeatureRows(list(taps), "power")
    x, xv = rows.transform(train.x), rows.transform(validation.x)
    scores = {}
    for c in (1.0, 10.0, 100.0, 1000.0):
        model = LogisticRegression(C=c, solver="newton-cg", max_iter=2000).fit(x, train.y)
        scores[c] = float(np.mean(model.predict(xv) == validation.y))
    best = max(scores, key=scores.get)
    return scores[best], best


def linear_scaling_table(train, validation, taps: tuple[str, ...]) -> list[str]:
    """Markdown rows: the logistic regression on the power-normalised taps, its rows as they
    are, scaled per feature (StandardScaler) and scaled per part as the dense head does; C
    from a grid chosen on validation, each scaling its own grid (scaled rows want smaller C)."""
    from sklearn.linear_model import LogisticRegression

    from pipeline.heads.dense import standardization_statistics
    from pipeline.heads.features import FeatureRows

    rows = FeatureRows(list(taps), "power")
    x, xv = rows.transform(train.x), rows.transform(validation.x)
    per_feature = _per_feature_statistics(list(taps), "power", train.x)
    per_part = standardization_statistics(list(taps), "power", train.x)
    scalings = {"none (unit-length parts)": (lambda a: a, (1.0, 10.0, 100.0, 1000.0)),
                "feature": (lambda a: (a - per_feature[0]) / np.sqrt(per_feature[1]),
                            (0.001, 0.01, 0.1, 1.0)),
                "part": (lambda a: (a - per_part[0]) / np.sqrt(per_part[1]),
                         (0.001, 0.01, 0.1, 1.0))}
    lines = ["| scaling | best val accuracy | C |", "|---|---|---|"]
    for name, (scaled, grid) in scalings.items():
        scores = {c: float(np.mean(LogisticRegression(C=c, max_iter=3000)
                                   .fit(scaled(x), train.y).predict(scaled(xv))
                                   == validation.y)) for c in grid}
        best = max(scores, key=scores.get)
        lines.append(f"| {name} | {scores[best]:.4f} | {best:g} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--inputs", nargs="+", default=["flatten", "taps"],
                        choices=["flatten", "taps"])
    parser.add_argument("--tables", nargs="+", default=["grid", "ablation", "linear"],
                        choices=["grid", "ablation", "linear"])
    args = parser.parse_args()
    train, validation, n_classes, taps = load_splits(args.config)
    print(f"{len(train)} train / {len(validation)} validation rows, {n_classes} classes")
    reference, c = logistic_reference(train, validation, taps)
    print(f"logistic regression, taps, power, C={c:g}: val {reference:.4f}")
    if "linear" in args.tables:
        print("\n".join(linear_scaling_table(train, validation, taps)))
    inputs = {"flatten": ("flatten", "none"), "taps": (list(taps), "power")}
    settings = []
    if "grid" in args.tables:
        settings += [(name, f"{optimizer} {rate:g}", "part", {**DEFAULT, "optimizer": optimizer,
                                                             "learning_rate": rate})
                     for name in args.inputs
                     for optimizer, rates in GRID.items() for rate in rates]
    if "ablation" in args.tables:
        settings += [(name, label, scaling, params) for name in args.inputs
                     for label, scaling, params in ABLATION]
    print(f"| input | setting | scaling | val accuracy (mean ± sd over {len(args.seeds)} "
          f"seeds) | epochs | fit s |")
    print("|---|---|---|---|---|---|")
    for name, label, scaling, params in settings:
        features, normalize = inputs[name]
        runs = [fit_dense(train, validation, n_classes, seed, features, normalize, scaling,
                          params) for seed in args.seeds]
        accuracies = [r[0] for r in runs]
        spread = statistics.stdev(accuracies) if len(runs) > 1 else 0.0
        print(f"| {name} | {label} | {scaling} | {statistics.mean(accuracies):.4f} ± "
              f"{spread:.4f} | {statistics.mean(r[1] for r in runs):.0f} | "
              f"{statistics.mean(r[2] for r in runs):.1f} |", flush=True)


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - started:.0f} s")
