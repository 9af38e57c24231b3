"""Benchmark: extraction on a GPU through Keras' JAX or PyTorch backend (no TensorFlow needed).

For each precision and batch size it prints, in img/s:

- ``bare device``: the compiled VGG16 base on pixels already on the device, results left
  there: the chip's ceiling for this model, batch and precision;
- ``bare call``:   the function the pipeline calls (``nn.inference.compiled_inference``:
  numpy pixels in, numpy features out, so each batch is copied to and from the device);
- ``pipeline``:    the extraction loop itself (:func:`pipeline.extract.loop.extract_batches`):
  files read and hashed, decoded and resized by ``--threads`` threads, the base, and every
  row written into HDF5 shards of a fresh cache, as ``pipeline run extract`` does;

and, once per thread count, ``decode``: the batch reader alone (what feeding the device costs).

Weights are random (speed does not depend on their values), so it needs neither weight files
nor TensorFlow: the device image's JAX or PyTorch, plus the wheels of ``bench/device_wheels.sh``.
The photos are ``--data`` repeated to ``--images`` (by default the repository's demo/flowers,
small photos of about 320x240; larger photos decode slower, see ``--jpeg-draft``). Run it
from the repository root:

    python -m bench.gpu_extract --backend jax --precisions float32 bfloat16 \\
        --batch-sizes 64 128 256 512 --threads 16
    python -m bench.gpu_extract --backend jax --size 32 --images 64 --batch-sizes 8 \\
        --precisions float32 --threads 2    # a quick check on a CPU
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["jax", "torch"], default="jax")
    parser.add_argument("--data", type=Path, default=Path("demo/flowers"))
    parser.add_argument("--images", type=int, default=16384,
                        help="images per pipeline and bare measurement (files repeated)")
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count() or 1],
                        help="decode threads (stages.extract.decode_workers)")
    parser.add_argument("--jpeg-draft", action="store_true", help="data.jpeg_draft")
    parser.add_argument("--skip-pipeline", action="store_true", help="bare inference only")
    return parser.parse_args()


def image_files(data: Path, count: int) -> list[Path]:
    """The photos under ``data`` (sorted), repeated until there are ``count``."""
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no photos under {data}")
    return [files[i % len(files)] for i in range(count)]


def device_name(backend: str) -> str:
    """The accelerator the backend computes on."""
    if backend == "jax":
        import jax
        device = jax.devices()[0]
        return f"{device.platform}: {device.device_kind}"
    import torch
    return f"cuda: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "cpu"


def device_resident(backend: str, model, batch_size: int, size: int):
    """A function of no arguments running ``model`` once on a batch kept on the device, and
    one that waits for the device to finish."""
    import numpy as np

    pixels = np.random.default_rng(0).uniform(0, 255, (batch_size, size, size, 3))
    pixels = pixels.astype(np.float32)
    if backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        frozen = [v.value for v in model.non_trainable_variables]
        call = jax.jit(lambda t, f, x: model.stateless_call(t, f, x, training=False)[0])
        on_device = jax.device_put(pixels)
        results = []

        def step():
            results.append(call(trainable, frozen, on_device))

        def wait():
            jax.block_until_ready(results)
            results.clear()
        return step, wait
    import torch

    on_device = torch.as_tensor(pixels, device="cuda" if torch.cuda.is_available() else "cpu")

    def step():
        with torch.no_grad():
            model(on_device, training=False)

    def wait():
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return step, wait


def rate(images: int, seconds: float) -> float:
    """Images per second."""
    return images / seconds if seconds > 0 else float("nan")


def measure(args: argparse.Namespace, precision: str, batch_size: int, files: list[Path],
            work: Path) -> dict[str, float]:
    """img/s of the three measurements for one precision and batch size."""
    import numpy as np

    from cache import FeatureStore, open_writer
    from pipeline.backbone.model import build_feature_extractor
    from pipeline.backbone.spec import BackboneSpec
    from pipeline.backbone.weights import WeightsSource
    from pipeline.data.batches import BatchReader
    from pipeline.data.decode import DecodeOptions
    from pipeline.extract.loop import Inference, extract_batches
    from pipeline.nn.inference import compiled_inference

    spec = BackboneSpec(weights=WeightsSource("random", seed=0),
                        decode=DecodeOptions((args.size, args.size), jpeg_draft=args.jpeg_draft),
                        precision=precision)
    batches = max(2, len(files) // batch_size)
    model = build_feature_extractor(spec)
    step, wait = device_resident(args.backend, model, batch_size, args.size)
    for _ in range(2):  # compile, warm up
        step()
    wait()
    started = time.perf_counter()
    for _ in range(batches):
        step()
    wait()
    result = {"bare device": rate(batches * batch_size, time.perf_counter() - started)}

    call = compiled_inference(model)
    pixels = np.random.default_rng(1).uniform(0, 255, (batch_size, args.size, args.size, 3))
    pixels = pixels.astype(np.float32)
    call(pixels)
    started = time.perf_counter()
    for _ in range(batches):
        call(pixels)
    result["bare call"] = rate(batches * batch_size, time.perf_counter() - started)
    if args.skip_pipeline:
        return result

    infer = Inference(spec)
    infer.build()
    infer(pixels)  # the compile, outside the timed loop as in bare
    for threads in args.threads:
        store_dir = work / f"cache-{precision}-{batch_size}-{threads}"
        store = FeatureStore(store_dir, "bench")
        keys = [f"{i:064x}" for i in range(len(files))]
        reader = BatchReader(files, [None] * len(files), spec.decode, batch_size=batch_size,
                             workers=threads)
        started = time.perf_counter()
        with open_writer(store, spec.describe()) as writer:
            extract_batches(reader, keys, infer,
                            lambda shas, rows, writer=writer: writer.add(shas, rows["output"]),
                            lambda *failure: None)
        seconds = time.perf_counter() - started
        entries = store.stats().entries
        if entries != len(files):
            raise SystemExit(f"only {entries} of {len(files)} images were written: "
                             f"{reader.failures}")
        result[f"pipeline {threads} threads"] = rate(len(files), seconds)
        shutil.rmtree(store_dir, ignore_errors=True)
    return result


def decode_rate(files: list[Path], size: int, threads: int, draft: bool,
                batch_size: int) -> float:
    """img/s of the batch reader alone."""
    from pipeline.data.batches import BatchReader
    from pipeline.data.decode import DecodeOptions

    reader = BatchReader(files, [None] * len(files), DecodeOptions((size, size), jpeg_draft=draft),
                         batch_size=batch_size, workers=threads)
    started = time.perf_counter()
    count = sum(len(batch.positions) for batch in reader)
    return rate(count, time.perf_counter() - started)


def main() -> None:
    args = parse_args()
    # Keras reads its backend once, when first imported: before anything of the pipeline
    os.environ["KERAS_BACKEND"] = args.backend
    files = image_files(args.data, args.images)
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        from pipeline.nn.runtime import keras
        print(f"backend {keras.backend.backend()}, {device_name(args.backend)}, "
              f"{os.cpu_count()} CPU cores; {len(files)} images per measurement from "
              f"{args.data}, {args.size}x{args.size}, random weights, jpeg_draft "
              f"{str(args.jpeg_draft).lower()}", flush=True)
        for threads in args.threads:
            decoded = decode_rate(files, args.size, threads, args.jpeg_draft,
                                  max(args.batch_sizes))
            print(f"decode alone, {threads} threads: {decoded:,.0f} img/s "
                  f"({decoded / threads:,.0f} per thread)", flush=True)
        header = None
        for precision in args.precisions:
            for batch_size in args.batch_sizes:
                row = measure(args, precision, batch_size, files, work)
                if header is None:
                    header = list(row)
                    print(f"{'precision':<10} {'batch':>5} " +
                          " ".join(f"{name:>22}" for name in header), flush=True)
                print(f"{precision:<10} {batch_size:>5} " +
                      " ".join(f"{row[name]:>22,.0f}" for name in header), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
