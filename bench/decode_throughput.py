"""Benchmark: how fast the pipeline's one decode path turns photos into batches.

Reads the first N images of a labelled folder (round-robin over classes) through
:class:`~pipeline.data.batches.BatchReader`, exactly as extraction does (read, check the sha256,
decode, EXIF-rotate, convert, resize, into float32 batches), with nothing consuming the batches:
the rate a device could be fed at. For each number of decode threads and with and without
``data.jpeg_draft`` (libjpeg's scaled decoding), it prints img/s and img/s per thread. Each
setting runs ``--rounds`` times after one warm-up pass (the files then come from the page
cache, as they do when a data set is read more than once), alternating the settings so the
machine's drift spreads over all of them; the table gives the median.

    python -m bench.decode_throughput --data ../shared/data/flowers-1000 --threads 1 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bench.extract_throughput import pick_images


def decode_rate(paths: list[Path], size: int, threads: int, draft: bool,
                batch_size: int) -> float:
    """Images per second through a BatchReader of ``threads`` threads."""
    from cache.files import sha256_file
    from pipeline.data.batches import BatchReader
    from pipeline.data.decode import DecodeOptions

    sha256 = [sha256_file(p) for p in paths]  # the scan's work, not the reader's
    reader = BatchReader(paths, sha256, DecodeOptions((size, size), jpeg_draft=draft),
                         batch_size=batch_size, workers=threads)
    started = time.perf_counter()
    decoded = sum(int(batch.ok.sum()) for batch in reader)
    seconds = time.perf_counter() - started
    if decoded != len(paths):
        raise SystemExit(f"{len(paths) - decoded} images did not decode: {reader.failures}")
    return decoded / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/flowers-1000"))
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    paths = pick_images(args.data, args.images)
    settings = [(threads, draft) for threads in args.threads for draft in (False, True)]
    decode_rate(paths, args.size, max(args.threads), False, args.batch_size)  # warm-up
    rates: dict[tuple[int, bool], list[float]] = {s: [] for s in settings}
    for _ in range(args.rounds):
        for threads, draft in settings:
            rates[threads, draft].append(decode_rate(paths, args.size, threads, draft,
                                                     args.batch_size))
    print(f"{len(paths)} images of {args.data}, {args.size}x{args.size}, batch "
          f"{args.batch_size}, median of {args.rounds} round(s)")
    print(f"{'threads':>7}  {'jpeg_draft':>10}  {'img/s':>8}  {'img/s/thread':>12}  rounds")
    for threads, draft in settings:
        median = statistics.median(rates[threads, draft])
        each = ", ".join(f"{r:.0f}" for r in rates[threads, draft])
        print(f"{threads:>7}  {str(draft).lower():>10}  {median:>8.0f}  {median / threads:>12.0f}"
              f"  {each}")


if __name__ == "__main__":
    main()
