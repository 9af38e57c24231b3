"""Benchmark: the dense head's optimizer and learning rate, measured on a real cache.

Fits the dense head on the cached features of a project (``-c stages.yaml``, extracted first
with ``pipeline run extract``) for each optimizer and learning rate of a grid, on two inputs:
the (h, w, c) output tensor flattened, and the project's taps power-normalised, each
standardised with the training split's statistics (the head's ``scale``), batch 32, up to 50
epochs with early stopping on validation accuracy (patience 10, best epoch restored). Also
the source material's recipe (flatten, unscaled, RMSprop 2e-5, batch 20, 30 epochs), and the
repository's logistic regression (taps, power, newton-cg, C chosen on validation) as the
reference the dense head must come within 2 points of. Each dense setting is fitted with
``--seeds`` seeds; the table gives the mean and spread of validation accuracy, the epochs run
and the fit seconds. Selection is on validation only; the test split is not read.

    python -m bench.dense_head -c /tmp/flowers/stages.yaml
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

GRID = {"adam": [1e-4, 3e-4, 1e-3, 3e-3], "rmsprop": [1e-4, 3e-4, 1e-3],
        "sgd": [1e-2, 3e-2]}
SOURCE_RECIPE = {"optimizer": "rmsprop", "learning_rate": 2e-5, "batch_size": 20,
                 "epochs": 30, "patience": None}


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


def fit_dense(train, validation, n_classes: int, seed: int, features, normalize: str,
              scale: bool, params: dict) -> tuple[float, int, float]:
    """(validation accuracy, epochs run, fit seconds) of one dense head."""
    from pipeline.config import HeadConfig
    from pipeline.heads.trial import TrialSpec
    from pipeline.heads.trials import Trial

    spec = TrialSpec("dense", 0, HeadConfig(kind="dense", features=features,
                                            normalize=normalize, scale=scale, params=params),
                     seed=seed)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--inputs", nargs="+", default=["flatten", "taps"],
                        choices=["flatten", "taps"])
    args = parser.parse_args()
    train, validation, n_classes, taps = load_splits(args.config)
    print(f"{len(train)} train / {len(validation)} validation rows, {n_classes} classes")
    reference, c = logistic_reference(train, validation, taps)
    print(f"logistic regression, taps, power, C={c:g}: val {reference:.4f}")
    inputs = {"flatten": ("flatten", "none"), "taps": (list(taps), "power")}
    settings = [("source recipe (unscaled)", "flatten", False, SOURCE_RECIPE)]
    for name in args.inputs:
        settings += [(f"{optimizer} {rate:g}", name, True,
                      {"optimizer": optimizer, "learning_rate": rate, "batch_size": 32,
                       "epochs": 50, "patience": 10})
                     for optimizer, rates in GRID.items() for rate in rates]
    print(f"| input | setting | val accuracy (mean ± sd over {len(args.seeds)} seeds) "
          f"| epochs | fit s |")
    print("|---|---|---|---|---|")
    for label, name, scale, params in settings:
        features, normalize = inputs[name]
        runs = [fit_dense(train, validation, n_classes, seed, features, normalize, scale,
                          params) for seed in args.seeds]
        accuracies = [r[0] for r in runs]
        spread = statistics.stdev(accuracies) if len(runs) > 1 else 0.0
        print(f"| {name} | {label} | {statistics.mean(accuracies):.4f} ± {spread:.4f} | "
              f"{statistics.mean(r[1] for r in runs):.0f} | "
              f"{statistics.mean(r[2] for r in runs):.1f} |", flush=True)


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - started:.0f} s")
