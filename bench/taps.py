"""Benchmark: what taps buy. The probe table, and the best head before and after, per input size.

For each input size it runs, on one data folder and one cache, extract and the probe of a
stages.yaml (the repository's by default: its taps), then two heads stages on the same cache:
the heads of the release before taps (all on the (h, w, 512) output tensor; kept below as they
were in stages.yaml) and the heads of the stages.yaml. It prints the probe table and, per size,
each side's best head with its validation and test accuracy. The test split is scored once per
heads stage, for its best head only, as the pipeline always does. Run from the repository root
(features computed once per size, then cached):

    python -m bench.taps --data ../shared/data/flowers-1000 --cache /tmp/taps-cache
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml

from bench.dense_head import SOURCE_HEAD

# The heads of the repository's stages.yaml before taps, unchanged: the baseline.
PREVIOUS_HEADS = {
    "dense": {**SOURCE_HEAD, "params": {**SOURCE_HEAD["params"], "patience": 5}},
    "logreg": {"kind": "logistic_regression", "scale": True,
               "sweep": {"params": {"features": ["gap", "flatten"], "C": [0.01, 0.1, 1.0]}}},
    "knn": {"kind": "knn", "features": "gap", "scale": True,
            "sweep": {"params": {"n_neighbors": [3, 7]}}},
    "sgd": {"kind": "sgd", "features": "gap", "scale": True,
            "sweep": {"method": "random", "n_trials": 4,
                      "params": {"alpha": {"loguniform": [1.0e-5, 1.0e-1]}}}},
}


def _run(config, *stages: str) -> dict:
    from pipeline.context import RunContext
    from pipeline.runner.execute import run_stages
    from pipeline.runner.registry import stage_named

    run, _ = run_stages(RunContext(config), [stage_named(name) for name in stages],
                        progress=False)
    return json.loads((run.path / "metrics.json").read_text()) | {"run": str(run.path)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("stages.yaml"))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[150, 224])
    parser.add_argument("--runs", type=Path, default=None,
                        help="where run folders go (default: a temporary folder)")
    args = parser.parse_args()

    from pipeline.config import load_config

    runs = args.runs or Path(tempfile.mkdtemp(prefix="bench-taps-"))
    results = []
    for size in args.sizes:
        overrides = [f"data.root={args.data.resolve()}", f"cache.dir={args.cache.resolve()}",
                     f"data.image_size=[{size}, {size}]", f"runs.dir={runs / str(size)}"]
        config = load_config(args.config, overrides)
        probe = _run(config, "extract", "probe")
        table = json.loads((Path(probe["run"]) / "probe.json").read_text())
        print(f"probe at {size}x{size} ({config.backbone.weights}), "
              f"{probe['probe.seconds']:.1f} s")
        print(f"{'rank':>4}  {'feature':<18} {'dim':>6}  {'val_acc':>7}  {'C':>7}  {'fit_s':>6}")
        for row in table:
            print(f"{row['rank']:>4}  {row['feature']:<18} {row['dimension']:>6}  "
                  f"{row['val_accuracy']:>7.4f}  {row['C']:>7g}  {row['fit_seconds']:>6.2f}")
        heads = yaml.safe_dump(PREVIOUS_HEADS, default_flow_style=True).strip()
        previous = load_config(args.config, [*overrides, f"stages.heads.models={heads}"])
        for label, heads_config in (("before taps", previous), ("stages.yaml", config)):
            metrics = _run(heads_config, "heads")
            results.append((size, label, metrics["heads.best.name"],
                            metrics["heads.best.val_accuracy"],
                            metrics.get("heads.best.test_accuracy", float("nan")),
                            metrics["heads.trials"], metrics["heads.seconds"]))
    print(f"\n{'size':>4}  {'heads':<12} {'best':<10} {'val_acc':>7}  {'test_acc':>8}  "
          f"{'trials':>6}  {'seconds':>7}")
    for size, label, best, val, test, trials, seconds in results:
        print(f"{size:>4}  {label:<12} {best:<10} {val:>7.4f}  {test:>8.4f}  {trials:>6}  "
              f"{seconds:>7.1f}")
    print(f"run folders: {runs}")


if __name__ == "__main__":
    main()
