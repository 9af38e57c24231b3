"""Benchmark: the cache's bookkeeping at 10^4 to 10^6 images (issue 22).

Makes N synthetic 32x32 JPEGs in 10 class folders (kept in ``--workdir`` and reused by later
runs), points the repository's stages.yaml at them with ``backbone.weights: null`` and 32x32
inputs, then times each step as a fresh ``pipeline`` process:

    first extract    pipeline run extract (fresh cache)
    rerun            pipeline run extract, nothing changed
    status           pipeline status
    force            pipeline run extract --force, every image cached
    touched          one file's mtime changed, its bytes not, then pipeline run extract
    one new image    one new image, then pipeline run extract
    heads            pipeline run heads (with --heads; bounded by --heads-timeout)

With ``--fill-through-api`` (for 10^6 images, where the first extraction would run the
network for hours on 2 cores), the cache is filled instead through the cache API with random
features of the right shapes for every image (hashing every file once, as extract does, and
recording the hash state); "first extract" is then the first ``pipeline run extract``, which
finds every image cached and writes the dataset view. The steps after it time the bookkeeping
alone, as they do at the other sizes.

Each step reports wall seconds, the command process's peak RSS and the bytes it read
(``rchar`` of /proc/self/io: every read() call, the Python modules it imports included), and
the largest peak RSS among the processes it started (dask workers). Prints a Markdown table;
run it from the repository root:

    python -m bench.scale --sizes 10000 100000 --workdir /tmp/scale
    python -m bench.scale --sizes 1000000 --fill-through-api --workdir /tmp/scale
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.peak_memory import children_peak_rss_mb, peak_rss_mb

REPO = Path(__file__).resolve().parents[1]
CLASSES = 10
STEPS = ("first extract", "rerun", "status", "force", "touched", "one new image", "heads")


def make_images(folder: Path, count: int) -> Path:
    """``count`` distinct 32x32 JPEGs under ``folder/<class>/`` (made once, reused)."""
    import numpy as np
    from PIL import Image

    marker = folder / f".complete-v2-{count}"
    if marker.exists():
        return folder
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        (folder / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    for i in range(count):
        pixels = base.copy()
        pixels.reshape(-1)[:8] = np.frombuffer(i.to_bytes(8, "little"), dtype=np.uint8)
        pixels[8:16, :, i % 3] = (i * 37) % 256  # distinct bytes, and a little content
        # the comment makes every file's bytes distinct, whatever the compression keeps
        Image.fromarray(pixels).save(folder / f"class{i % CLASSES:02d}" / f"img{i:07d}.jpg",
                                     quality=90, comment=f"image {i}".encode())
    marker.touch()
    return folder


def write_config(project: Path, data: Path) -> Path:
    """The repository's stages.yaml, on ``data``, with random weights and 32x32 inputs."""
    document = yaml.safe_load((REPO / "stages.yaml").read_text(encoding="utf-8"))
    document["data"]["root"] = str(data)
    document["data"]["image_size"] = [32, 32]
    document["backbone"]["weights"] = None
    document["cache"] = {"dir": str(project / "cache")}
    document.setdefault("runs", {})["dir"] = str(project / "runs")
    path = project / "stages.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def measure(args: list[str], timeout: float | None = None) -> dict:
    """Run ``pipeline ARGS`` in a child process: seconds, its peak RSS and bytes read, and the
    largest peak RSS among its own children (MB)."""
    report = Path(os.environ.get("TMPDIR", "/tmp")) / f"scale-{os.getpid()}.json"
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "bench.scale", "--child", str(report),
                              *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return {"seconds": time.perf_counter() - start, "timed_out": True}
    seconds = time.perf_counter() - start
    if child.returncode not in (0, 3):
        raise RuntimeError(f"pipeline {' '.join(args)} failed ({child.returncode}):\n"
                           f"{err.decode(errors='replace')[-2000:]}")
    measured = json.loads(report.read_text())
    report.unlink()
    return {"seconds": seconds, **measured, "output": out.decode(errors="replace")}


def _child(report: str, args: list[str]) -> int:
    """Inside the measured process: run the command, then record what it used."""

    def record() -> None:
        io = dict(line.split(": ") for line in
                  Path("/proc/self/io").read_text().splitlines())
        Path(report).write_text(json.dumps({
            "rss_mb": peak_rss_mb(), "children_rss_mb": children_peak_rss_mb(),
            "read_mb": int(io["rchar"]) / 1e6}))

    atexit.register(record)
    from pipeline.cli import main
    return main(args)


def fill_through_api(config_file: Path) -> dict:
    """Hash every image of ``config_file``'s data (recording the hash state) and give each
    a random row in every store extract fills (the output's and each tap's), through the
    cache API: the cache a first extraction would leave, without the network. Runs in this
    process; returns its seconds and the rows written per store."""
    import numpy as np

    from cache.hashstate import open_hash_state
    from pipeline.config import OUTPUT, load_config
    from pipeline.context import RunContext
    from pipeline.data.scan import scan_dataset
    from pipeline.extract._writers import open_writers

    start = time.perf_counter()
    ctx = RunContext(load_config(config_file))
    with open_hash_state(ctx.config.cache.dir) as hash_state:
        scan = scan_dataset(ctx.config.data, hash_state=hash_state)
    keys = list(dict.fromkeys(image.sha256 for image in scan.images))
    spec = ctx.spec
    shapes = {part: spec.output_shape if part == OUTPUT else spec.tap_shape(part)
              for part in ctx.stores}
    rng = np.random.default_rng(0)
    with open_writers(ctx, tuple(ctx.stores)) as (_, writers):
        for begin in range(0, len(keys), 4096):
            batch = keys[begin:begin + 4096]
            for part, writer in writers.items():
                writer.add(batch, rng.standard_normal((len(batch), *shapes[part]),
                                                      dtype=np.float32))
    return {"seconds": time.perf_counter() - start, "rows": len(keys)}


def run_size(count: int, workdir: Path, heads: bool, heads_timeout: float,
             through_api: bool = False) -> dict[str, dict]:
    """Every step at ``count`` images, on a fresh cache (filled through the cache API first
    with ``through_api``)."""
    import shutil

    data = make_images(workdir / f"images-{count}", count)
    project = workdir / f"project-{count}"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    config = ["-c", str(write_config(project, data)), "--no-progress"]
    results = {}
    if through_api:
        results["filled through the API"] = fill_through_api(Path(config[1]))
    results["first extract"] = measure(["run", "extract", *config])
    results["rerun"] = measure(["run", "extract", *config])
    results["status"] = measure(["status", "-c", config[1]])
    results["force"] = measure(["run", "extract", "--force", *config])
    touched = next((data / "class00").iterdir())
    os.utime(touched)
    results["touched"] = measure(["run", "extract", *config])
    new = data / "class01" / "zz-new.jpg"
    shutil.copy(touched, new)
    with open(new, "ab") as fh:
        fh.write(b"\0")  # other bytes, so another image to the cache
    try:
        results["one new image"] = measure(["run", "extract", *config])
    finally:
        new.unlink()
    if heads:
        results["heads"] = measure(["run", "heads", *config], timeout=heads_timeout)
    return results


def format_table(results: dict[int, dict[str, dict]]) -> str:
    """Markdown: a row per step, a column per size (seconds / MB peak RSS / MB read)."""
    sizes = sorted(results)
    lines = ["| step | " + " | ".join(f"{n:,} images" for n in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for step in STEPS:
        cells = []
        for n in sizes:
            m = results[n].get(step)
            filled = results[n].get("filled through the API")
            if m is None:
                cells.append("-")
            elif step == "first extract" and filled:
                cells.append(f"cache filled through the API ({filled['rows']:,} rows a store, "
                             f"{filled['seconds']:.0f} s, not a pipeline command), then "
                             f"{m['seconds']:.2f} s / {m['rss_mb']:,.0f} MB / "
                             f"{m['read_mb']:,.0f} MB read")
            elif m.get("timed_out"):
                cells.append(f"did not finish in {m['seconds']:.0f} s")
            else:
                children = (f" (+{m['children_rss_mb']:,.0f} MB children)"
                            if m["children_rss_mb"] > m["rss_mb"] / 10 else "")
                cells.append(f"{m['seconds']:.2f} s / {m['rss_mb']:,.0f} MB{children} / "
                             f"{m['read_mb']:,.0f} MB read")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(_child(sys.argv[2], sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/scale"))
    parser.add_argument("--heads", action="store_true", help="also time pipeline run heads")
    parser.add_argument("--heads-timeout", type=float, default=900)
    parser.add_argument("--fill-through-api", action="store_true",
                        help="fill the cache with random features through the cache API "
                             "instead of a first extraction (see the module docstring)")
    options = parser.parse_args()
    results = {}
    for count in options.sizes:
        results[count] = run_size(count, options.workdir, options.heads, options.heads_timeout,
                                  options.fill_through_api)
        print(f"{count:,} images done", file=sys.stderr, flush=True)
    print(format_table(results))


if __name__ == "__main__":
    main()
