"""Benchmark: what reading a dataset view costs, and what the view then holds (issue 22, item 5).

Writes a synthetic view of N images (10 classes, paths like ``class03/img0000042.jpg``, splits
drawn 70/15/15) once per size into ``--workdir``, then reads it back several times in this
process and prints, per size: the read's wall seconds (min-max), the memory the view holds once
read and the read's peak (both ``tracemalloc``), and how many objects the cyclic garbage
collector tracks more than before it (a tuple or dict an image, or a few arrays).

Views are written in one format by every release, so the same files can be read by an older
checkout (``PYTHONPATH=<old tree> python -m bench.view_memory ...``, with ``--workdir``
shared) to compare. Run from the repository root:

    python -m bench.view_memory --sizes 100000 1000000 --workdir /tmp/view-memory
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from pathlib import Path

import numpy as np

from pipeline.data.view import read_view

CLASSES = [f"class{c:02d}" for c in range(10)]


def make_view(count: int, path: Path) -> Path:
    """A view of ``count`` synthetic images at ``path`` (written once, reused)."""
    if path.exists():
        return path
    from pipeline.data.columns import PackedStrings
    from pipeline.data.table import ImageTable
    from pipeline.data.view import DatasetView, write_view

    split = np.random.default_rng(0).choice(3, count, p=[0.7, 0.15, 0.15]).astype(np.int8)
    table = ImageTable(CLASSES, PackedStrings.of(f"class{i % 10:02d}/img{i:07d}.jpg"
                                                 for i in range(count)),
                       (np.arange(count) % 10).astype(np.int32), split,
                       np.array([f"{i:064x}" for i in range(count)], "S64"))
    write_view(DatasetView(root="/data", classes=CLASSES, fingerprint="0" * 16, images=table),
               path)
    return path


def measure(path: Path, repeat: int) -> dict:
    """Read the view at ``path`` ``repeat`` times (timed), then once under tracemalloc."""
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        view = read_view(path)
        seconds.append(time.perf_counter() - started)
        del view
    gc.collect()
    objects = len(gc.get_objects())
    tracemalloc.start()
    view = read_view(path)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    gc.collect()
    return {"images": len(view.images), "seconds": seconds, "held": held / 2**20,
            "peak": peak / 2**20, "objects": len(gc.get_objects()) - objects}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/view-memory"))
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    options.workdir.mkdir(parents=True, exist_ok=True)
    print("| images | view file | read (min-max) | held | read's peak | objects tracked |")
    print("|---|---|---|---|---|---|")
    for count in options.sizes:
        path = make_view(count, options.workdir / f"view-{count}.json")
        found = measure(path, options.repeat)
        print(f"| {found['images']:,} | {path.stat().st_size / 1e6:,.1f} MB | "
              f"{min(found['seconds']):.2f}-{max(found['seconds']):.2f} s | "
              f"{found['held']:,.1f} MiB | {found['peak']:,.1f} MiB | "
              f"+{found['objects']:,} |")


if __name__ == "__main__":
    main()
