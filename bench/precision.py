"""Benchmark: what lower precision costs and buys. Per compute precision (and float16 storage),
the extraction rate, how far the features move from float32's, and the best head's accuracy.

For each variant (``backbone.precision`` float32, bfloat16, float16, and float32 compute with
``cache.dtype: float16``) it runs ``extract`` then ``heads`` of a stages.yaml (the
repository's by default: its taps and heads) on one data folder, each variant into its own
cache, and prints: the extraction loop's img/s on every image (read, decode, infer, write:
end to end), the largest difference of any cached value from float32's relative to the largest
float32 value of that part (the output tensor, then the worst tap), and the best head with its
validation and test accuracy. Bare inference per precision is ``bench.extract_throughput
--precision``. Run from the repository root (variants run one after another, never at once):

    python -m bench.precision --data ../shared/data/flowers-1000 --cache /tmp/precision-cache
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from bench.taps import _run

VARIANTS = {  # label: stages.yaml overrides
    "float32": ["backbone.precision=float32"],
    "bfloat16": ["backbone.precision=bfloat16"],
    "float16": ["backbone.precision=float16"],
    "float32, float16 cache": ["backbone.precision=float32", "cache.dtype=float16"],
}


def largest_differences(reference, other) -> dict[str, float]:
    """For each part both contexts cache: max |other - reference| / max |reference|, over
    every image the reference holds."""
    differences = {}
    for part, store in reference.stores.items():
        shas = store.sha256s()
        expected, got = store.get(shas), other.stores[part].get(shas)
        differences[part] = float(np.abs(got - expected).max() / np.abs(expected).max())
    return differences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("stages.yaml"))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--runs", type=Path, default=None,
                        help="where run folders go (default: a temporary folder)")
    args = parser.parse_args()

    from pipeline.config import load_config
    from pipeline.context import RunContext

    runs = args.runs or Path(tempfile.mkdtemp(prefix="bench-precision-"))
    rows, contexts = [], {}
    for label in args.variants:
        folder = label.replace(", ", "-").replace(" ", "-")
        overrides = [f"data.root={args.data.resolve()}", *VARIANTS[label],
                     f"cache.dir={args.cache.resolve() / folder}", f"runs.dir={runs / folder}"]
        config = load_config(args.config, overrides)
        extracted = _run(config, "extract")
        heads = _run(config, "heads")
        contexts[label] = RunContext(config)
        rows.append((label, extracted, heads))
        print(f"{label}: {extracted['extract.images_new']} new images at "
              f"{extracted['extract.images_per_second']:.2f} img/s, best head "
              f"{heads['heads.best.name']} val {heads['heads.best.val_accuracy']:.4f} test "
              f"{heads.get('heads.best.test_accuracy', float('nan')):.4f}", flush=True)

    reference = contexts.get("float32")
    print(f"\n{'variant':<24} {'img/s':>7}  {'diff output':>11}  {'diff taps':>9}  "
          f"{'best head':<10} {'val_acc':>7}  {'test_acc':>8}")
    for label, extracted, heads in rows:
        output = taps = float("nan")
        if reference is not None and label != "float32":
            differences = largest_differences(reference, contexts[label])
            output = differences.pop("output", float("nan"))
            taps = max(differences.values(), default=float("nan"))
        rate = extracted["extract.images_per_second"]
        print(f"{label:<24} {rate:>7.2f}  {output:>11.2e}  {taps:>9.2e}  "
              f"{heads['heads.best.name']:<10} {heads['heads.best.val_accuracy']:>7.4f}  "
              f"{heads.get('heads.best.test_accuracy', float('nan')):>8.4f}")
    print(f"run folders: {runs}")


if __name__ == "__main__":
    main()
