"""Benchmark: bare model.predict vs the whole `pipeline run extract`, and a rerun.

Takes the first N images (by name, round-robin over classes) of a labelled folder, then:

1. bare:     decode them all into memory (not timed), then time ``model.predict`` on the
             preloaded array: the backbone's own speed, with nothing else to do;
2. pipeline: time ``pipeline run extract`` in a fresh process on a fresh cache: read, hash,
             decode, resize, infer, write shards; its extraction-loop rate is compared with (1);
   (1) and (2) alternate for ``--rounds`` rounds and are averaged;
3. rerun:    the same command again, forced past the up-to-date check, with nothing new in
             the data (every image a cache hit: no inference expected).

Both (1) and (2) include the model's first-call tracing; neither includes TensorFlow's import.
With ``--taps`` both compute those taps beside the output, in the same pass. Prints a table;
run it from the repository root:

    python -m bench.extract_throughput --images 1000 --data ../shared/data/flowers-1000
    python -m bench.extract_throughput --images 300 --taps block3_conv3.gap block4_conv3.gap
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def pick_images(data: Path, count: int) -> list[Path]:
    """The first ``count`` images, taking the next file of each class in turn."""
    classes = sorted(p for p in data.iterdir() if p.is_dir())
    files = {c: sorted(f for f in c.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
             for c in classes}
    picked, i = [], 0
    while len(picked) < count and any(i < len(f) for f in files.values()):
        for c in classes:
            if i < len(files[c]) and len(picked) < count:
                picked.append(files[c][i])
        i += 1
    return picked


def bare_predict(config_path: Path, images: list[Path], batch_size: int) -> dict:
    """Seconds of the backbone alone on preloaded pixels (run in a child process).

    ``predict``: ``model.predict`` on the whole array, as the issue asks. ``direct``: the traced
    inference function the pipeline uses, called batch by batch on slices of the array; no
    input pipeline at all, so it is the compute ceiling. (``model.predict`` feeds arrays
    through tf.data, which stalls at the end of some runs; both numbers are reported.)
    """
    import numpy as np

    from pipeline.backbone import backbone_spec
    from pipeline.backbone.model import build_feature_extractor
    from pipeline.config import load_config
    from pipeline.data.decode import decode_file
    from pipeline.nn.inference import compiled_inference

    spec = backbone_spec(load_config(config_path))
    pixels = np.stack([decode_file(p, spec.decode) for p in images]).astype(np.float32)
    model = build_feature_extractor(spec, spec.parts)
    started = time.perf_counter()
    model.predict(pixels, batch_size=batch_size, verbose=0)
    predict_s = time.perf_counter() - started
    infer = compiled_inference(model)
    started = time.perf_counter()
    for i in range(0, len(pixels), batch_size):
        infer(pixels[i:i + batch_size])
    direct_s = time.perf_counter() - started
    return {"images": len(pixels), "predict": predict_s, "direct": direct_s}


def run_cli(config_path: Path, *options: str) -> tuple[float, dict]:
    """(wall seconds, metrics.json) of one `pipeline run extract` in a new process."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "extract", "--no-progress",
                    "-c", str(config_path), *options], check=True, capture_output=True)
    wall = time.perf_counter() - started
    runs = sorted((config_path.parent / "runs").iterdir())
    return wall, json.loads((runs[-1] / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/flowers-1000"))
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--weights", default="hed-bsds500")
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="bare/pipeline pairs to average")
    parser.add_argument("--taps", nargs="*", default=[], help="backbone.taps, e.g. "
                        "block4_conv3.gap block5_conv3.gmp")
    parser.add_argument("--precision", default="float32", help="backbone.precision")
    parser.add_argument("--cache-dtype", default="float32", help="cache.dtype")
    parser.add_argument("--jpeg-draft", action="store_true", help="data.jpeg_draft")
    parser.add_argument("--decode-workers", type=int, default=2,
                        help="stages.extract.decode_workers")
    parser.add_argument("--bare", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        data = args.bare.parent / "data"
        print(json.dumps(bare_predict(args.bare, sorted(data.rglob("*.*")), args.batch_size)))
        return

    work = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        images = pick_images(args.data, args.images)
        for path in images:
            target = work / "data" / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
        config_path = work / "stages.yaml"
        config_path.write_text(yaml.safe_dump({
            "data": {"root": "data", "image_size": [args.size, args.size],
                     "jpeg_draft": args.jpeg_draft},
            "backbone": {"weights": args.weights, "taps": args.taps,
                         "precision": args.precision},
            "cache": {"dir": "cache", "dtype": args.cache_dtype},
            "stages": {"extract": {"batch_size": args.batch_size,
                                   "decode_workers": args.decode_workers}},
            "runs": {"dir": "runs"}}))

        # Bare and pipeline alternate, each in a fresh child process (so no process holds
        # TensorFlow's thread pools while another runs), on a fresh cache each round: this
        # machine's speed drifts by tens of percent over minutes, and alternating spreads the
        # drift over both sides.
        predict_rates, direct_rates, loop_rates, walls = [], [], [], []
        for _ in range(args.rounds):
            child = subprocess.run(
                [sys.executable, "-m", "bench.extract_throughput", "--bare", str(config_path),
                 "--batch-size", str(args.batch_size)], check=True, capture_output=True,
                text=True)
            bare = json.loads(child.stdout.strip().splitlines()[-1])
            n = bare["images"]
            predict_rates.append(n / bare["predict"])
            direct_rates.append(n / bare["direct"])
            shutil.rmtree(work / "cache", ignore_errors=True)
            first_wall, first = run_cli(config_path)
            loop_rates.append(first["extract.images_per_second"])
            walls.append(first_wall)
        # --force: past pipeline.lock's up-to-date check, so the cache itself is asked
        rerun_wall, rerun = run_cli(config_path, "--force")

        def mean(rates):
            return sum(rates) / len(rates)

        def each(rates):
            return ", ".join(f"{r:.2f}" for r in rates)

        ceiling = max(mean(predict_rates), mean(direct_rates))
        rows = [
            ("images", f"{n}", f"{args.size}x{args.size}, weights {args.weights}, "
                               f"batch {args.batch_size}, {args.rounds} round(s), "
                               f"taps: {', '.join(args.taps) or 'none'}, precision "
                               f"{args.precision}, cache {args.cache_dtype}, jpeg_draft "
                               f"{str(args.jpeg_draft).lower()}, {args.decode_workers} decode "
                               f"threads"),
            ("bare model.predict", f"{mean(predict_rates):.2f} img/s",
             f"rounds: {each(predict_rates)}"),
            ("bare traced call per batch", f"{mean(direct_rates):.2f} img/s",
             f"rounds: {each(direct_rates)}"),
            ("pipeline extract loop", f"{mean(loop_rates):.2f} img/s",
             f"rounds: {each(loop_rates)}; read, decode, resize, infer, write"),
            ("ratio loop / best bare", f"{mean(loop_rates) / ceiling:.3f}", "goal >= 0.9"),
            ("pipeline command, first run", f"{walls[-1]:.1f} s",
             f"{n / walls[-1]:.2f} img/s incl. TF import, hashing, model build"),
            ("pipeline command, rerun", f"{rerun_wall:.2f} s",
             f"new={rerun['extract.images_new']}, cached={rerun['extract.images_cached']}; "
             f"goal < 5 s"),
        ]
        width = max(len(r[0]) for r in rows)
        print(f"{'measure':<{width}}  {'value':>14}  notes")
        for name, value, note in rows:
            print(f"{name:<{width}}  {value:>14}  {note}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
