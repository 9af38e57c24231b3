"""Tiny generated image folders, configurations and caches that run in seconds.

Images are small random-noise JPEGs and PNGs drawn from a fixed seed; the backbone runs with
``weights: null`` (seeded random VGG16) at 32x32, the smallest input VGG16 accepts, so the
numbers are meaningless but exact and every test is fast and deterministic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
FLOWERS = REPO.parent / "shared" / "data" / "flowers-1000"
CACHED_CLASSES = ("cats", "dogs", "owls")


def write_image(path: Path, seed: int, size: tuple[int, int] = (40, 30), mode: str = "RGB",
                fmt: str | None = None) -> Path:
    """A deterministic noise image of ``size`` (width, height) at ``path``."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def make_image_folder(root: Path, classes: dict[str, int], start_seed: int = 0,
                      ext: str = "png") -> list[Path]:
    """``root/<class>/img_NN.<ext>`` noise images, ``classes`` = {name: count}."""
    paths, seed = [], start_seed
    for name, count in classes.items():
        for i in range(count):
            paths.append(write_image(root / name / f"img_{i:02d}.{ext}", seed))
            seed += 1
    return paths


def write_config(folder: Path, document: dict) -> Path:
    """Write ``document`` as ``folder/stages.yaml``."""
    path = folder / "stages.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def tiny_document(**extract) -> dict:
    """A stages.yaml for ``data/`` beside it: random weights, 32x32, small shards."""
    return {
        "data": {"root": "data", "image_size": [32, 32]},
        "backbone": {"weights": None, "seed": 1},
        "cache": {"dir": "cache"},
        "stages": {"extract": {"batch_size": 4, "shard_size": 4, **extract}},
        "runs": {"dir": "runs"},
    }


def context(project: Path, *overrides: str):
    """The :class:`~pipeline.context.RunContext` of ``project/stages.yaml`` with overrides."""
    from pipeline.config import load_config
    from pipeline.context import RunContext
    return RunContext(load_config(project / "stages.yaml", list(overrides)))


def extract(project: Path, *overrides: str, progress: bool = False):
    """Run the extract stage of ``project`` (stages.yaml with ``overrides``)."""
    from pipeline.extract.run import run_extract
    return run_extract(context(project, *overrides), progress=progress)


def cached_document(heads: dict, scheduler: str = "synchronous", taps: tuple[str, ...] = (),
                    **backbone) -> dict:
    """A stages.yaml whose features are written straight into the cache (no images needed)."""
    return {
        "data": {"root": "data", "image_size": [64, 64]},  # (2, 2, 512) features
        "backbone": {"weights": None, **({"taps": list(taps)} if taps else {}), **backbone},
        "cache": {"dir": "cache"},
        "stages": {"heads": {"models": heads}},
        "runs": {"dir": "runs"},
        "cluster": {"scheduler": scheduler},
    }


def write_cached_dataset(project: Path, per_split: dict[str, int], seed: int = 0,
                         classes: tuple[str, ...] = CACHED_CLASSES,
                         drop: frozenset[tuple[str, str]] = frozenset(),
                         noise_taps: tuple[str, ...] = ()) -> None:
    """Synthetic features of ``per_split`` images per class and split, and their dataset view.

    Each class has its own mean feature tensor, so heads can learn them; rows are
    (2, 2, 512) float32, stored under the fingerprint the project's stages.yaml implies.
    Each tap of ``backbone.taps`` gets (N, channels) vectors in its own store, class-separable
    like the output, except those in ``noise_taps``, which are pure noise. ``drop`` lists
    (split, class) pairs left empty.
    """
    from cache import open_writer
    from pipeline import vgg16
    from pipeline.data.view import DatasetView, ViewImage

    ctx = context(project)
    rng = np.random.default_rng(seed)
    taps = ctx.spec.taps
    shapes = {"output": (2, 2, 512),
              **{tap: (vgg16.tap_channels(vgg16.parse_tap(tap)[0]),) for tap in taps}}
    means = {part: rng.normal(0, 0 if part in noise_taps else 1, (len(classes), *shape))
             .astype(np.float32) for part, shape in shapes.items()}
    images, rows = [], {part: [] for part in shapes}
    for split, count in per_split.items():
        for label, name in enumerate(classes):
            for i in range(0 if (split, name) in drop else count):
                sha = f"{split[:2]}{label:02d}{i:060x}"
                images.append(ViewImage(f"{name}/{split}_{i}.png", name, split, sha))
                for part, shape in shapes.items():
                    rows[part].append(means[part][label]
                                      + rng.normal(0, 6.0, shape).astype(np.float32))
    for part, store in ctx.stores.items():
        with open_writer(store, ctx.description(part), shard_rows=64) as writer:
            writer.add([i.sha256 for i in images], np.stack(rows[part]))
    ctx.write_view(DatasetView(root=str(ctx.config.data.root), classes=list(classes),
                               fingerprint=ctx.fingerprint.id, images=images,
                               taps={tap: fp.id for tap, fp in ctx.tap_fingerprints.items()},
                               keep_output=ctx.spec.keep_output))


def record_extract(project: Path) -> None:
    """Record in pipeline.lock that extract ran, as if it had (``pipeline run heads`` then
    finds it up to date)."""
    from pipeline.extract.stage import STAGE
    from pipeline.runner.plan import record_stage
    record_stage(context(project), STAGE, None)


def split_project(root: Path, **stages) -> Path:
    """Split folders (train 4, validation 2, test 2 per class) and a stages.yaml."""
    for seed, (split, per_class) in enumerate((("train", 4), ("validation", 2), ("test", 2))):
        make_image_folder(root / "data" / split, {c: per_class for c in ("cats", "dogs")},
                          start_seed=100 * seed)
    document = tiny_document()
    document["stages"].update({
        "heads": {"models": {"dense": {"kind": "dense", "params": {"epochs": 2}}}},
        "finetune": {"frozen_epochs": 1, "finetune_epochs": 1, "batch_size": 4},
        "scratch": {"epochs": 1, "batch_size": 4},
        **stages})
    document["cluster"] = {"scheduler": "synchronous"}
    write_config(root, document)
    return root


def run_named(config, *names: str, progress: bool = False):
    """Run exactly the stages ``names`` of ``config`` in one run folder, without the lock
    (what ``pipeline run`` does after planning); returns (run folder, report)."""
    from pipeline.context import RunContext
    from pipeline.runner.execute import run_stages
    from pipeline.runner.registry import stage_named
    return run_stages(RunContext(config), [stage_named(name) for name in names],
                      progress=progress)
