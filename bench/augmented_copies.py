"""Benchmark: heads trained on cached augmented copies, K = 0, 2, 5 copies per training image.

For each K in turn (a fresh process each time): ``pipeline run extract`` with
``stages.extract.augmented_copies.count = K`` (copies 0..K-1 of an image have the same cache
keys whatever K is, so going from 2 to 5 computes 3 more per image), then ``pipeline run heads``
on the original training rows plus their K copies, one trial after another. Reports the time
the copies took to extract, and the best head's validation and test accuracy. The flowers-1000
features must be cached first (``python -m bench.heads_sweep`` does it). Run from the
repository root:

    python -m bench.augmented_copies --data ../shared/data/flowers-1000 --work /tmp/heads-bench

"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from bench.dense_head import SOURCE_HEAD
from bench.heads_sweep import pipeline_run

HEADS = {
    "logreg": {"kind": "logistic_regression", "scale": True,
               "sweep": {"params": {"features": ["gap", "flatten"], "C": [0.01, 0.1]}}},
    "svm": {"kind": "linear_svm", "features": "gap", "scale": True, "params": {"C": 0.01}},
    "boosting": {"kind": "gradient_boosting", "features": "gap"},
    "dense": SOURCE_HEAD,
}


def write_config(work: Path, data: Path) -> Path:
    """A stages.yaml for the flowers cache under ``work`` with the heads above."""
    document = {
        "data": {"root": str(data.resolve()), "image_size": [150, 150]},
        "backbone": {"weights": "hed-bsds500"},
        "cache": {"dir": str(work / "cache")},
        "stages": {"heads": {"models": HEADS}},
        "runs": {"dir": str(work / "runs")},
        "cluster": {"scheduler": "synchronous"},
    }
    path = work / "stages-augmented.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/flowers-1000"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/heads-bench"))
    parser.add_argument("--copies", default="0,2,5",
                        help="values of K, in order")
    parser.add_argument("--fill-mode", default="constant",
                        help="how transforms fill uncovered areas: constant (black, the "
                             "source's), nearest, reflect, wrap")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    config = write_config(args.work, args.data)
    rows = []
    for k in (int(v) for v in args.copies.split(",")):
        settings = (f"stages.extract.augmented_copies.count={k}",
                    f"stages.extract.augmented_copies.augmentation.fill_mode={args.fill_mode}")
        _, extract = pipeline_run(config, "extract", overrides=settings)
        _, heads = pipeline_run(config, "heads", overrides=settings)
        rows.append((k, extract["extract.augmented_copies_new"],
                     extract["extract.augmented_copies_seconds"],
                     heads["heads.train_images"] + heads["heads.train_augmented_copies"],
                     heads["heads.best.name"], heads["heads.best.val_accuracy"],
                     heads["heads.best.test_accuracy"], heads["heads.sweep_seconds"]))
    print(f"fill_mode {args.fill_mode}")
    print(f"{'K':>2} {'new copies':>10} {'extract s':>9} {'train rows':>10} {'best head':<10} "
          f"{'val acc':>7} {'test acc':>8} {'heads s':>7}")
    for k, new, seconds, train_rows, best, val, test, heads_seconds in rows:
        print(f"{k:>2} {new:>10} {seconds:>9.1f} {train_rows:>10} {best:<10} {val:>7.4f} "
              f"{test:>8.4f} {heads_seconds:>7.1f}")


if __name__ == "__main__":
    main()
