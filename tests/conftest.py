"""Shared fixtures: tiny generated image folders and configurations that run in seconds.

Images are small random-noise JPEGs and PNGs drawn from a fixed seed; the backbone runs with
``weights: null`` (seeded random VGG16) at 32x32, the smallest input VGG16 accepts, so the
numbers are meaningless but exact and every test is fast and deterministic.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cache.faults import ENV_VAR, RELEASE_ENV_VAR

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
FLOWERS = REPO.parent / "shared" / "data" / "flowers-1000"


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


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    """A project folder: 3 classes x 4 noise images under data/, and its stages.yaml."""
    make_image_folder(tmp_path / "data", {"cats": 4, "dogs": 4, "owls": 4})
    write_config(tmp_path, tiny_document())
    return tmp_path


@pytest.fixture
def flowers() -> Path:
    """The shared flowers-1000 photos; tests that need real photos skip without them."""
    if not FLOWERS.is_dir():
        pytest.skip(f"real photos not found at {FLOWERS}")
    return FLOWERS


CACHED_CLASSES = ("cats", "dogs", "owls")


def cached_document(heads: dict, scheduler: str = "synchronous") -> dict:
    """A stages.yaml whose features are written straight into the cache (no images needed)."""
    return {
        "data": {"root": "data", "image_size": [64, 64]},  # (2, 2, 512) features
        "backbone": {"weights": None},
        "cache": {"dir": "cache"},
        "stages": {"heads": {"models": heads}},
        "runs": {"dir": "runs"},
        "cluster": {"scheduler": scheduler},
    }


def write_cached_dataset(project: Path, per_split: dict[str, int], seed: int = 0,
                         classes: tuple[str, ...] = CACHED_CLASSES,
                         drop: frozenset[tuple[str, str]] = frozenset()) -> None:
    """Synthetic features of ``per_split`` images per class and split, and their dataset view.

    Each class has its own mean feature tensor, so heads can learn them; rows are
    (2, 2, 512) float32, stored under the fingerprint the project's stages.yaml implies.
    ``drop`` lists (split, class) pairs left empty.
    """
    from cache import FeatureStore, open_writer
    from pipeline.config import load_config
    from pipeline.fingerprint import backbone_fingerprint, backbone_spec
    from pipeline.views import DatasetView, ViewImage, view_path, write_view

    config = load_config(project / "stages.yaml")
    fingerprint, description = backbone_fingerprint(backbone_spec(config))
    store = FeatureStore(config.cache.dir, fingerprint)
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1, (len(classes), 2, 2, 512)).astype(np.float32)
    images, rows = [], []
    for split, count in per_split.items():
        for label, name in enumerate(classes):
            for i in range(0 if (split, name) in drop else count):
                sha = f"{split[:2]}{label:02d}{i:060x}"
                images.append(ViewImage(f"{name}/{split}_{i}.png", name, split, sha))
                rows.append(means[label] + rng.normal(0, 6.0, (2, 2, 512)).astype(np.float32))
    with open_writer(store, description, shard_rows=64) as writer:
        writer.add([i.sha256 for i in images], np.stack(rows))
    view = DatasetView(root=str(config.data.root), classes=list(classes),
                       fingerprint=fingerprint, images=images)
    write_view(view, view_path(config, store))


@pytest.fixture
def cached_project(tmp_path: Path):
    """Make a project whose cache already holds features: ``make(heads, scheduler)``."""
    (tmp_path / "data").mkdir()

    def make(heads: dict, scheduler: str = "synchronous",
             per_split: dict[str, int] | None = None, **dataset) -> Path:
        write_config(tmp_path, cached_document(heads, scheduler))
        write_cached_dataset(tmp_path, per_split or {"train": 12, "validation": 6, "test": 6},
                             **dataset)
        # as if extract had run: `pipeline run heads` finds it up to date
        from pipeline.config import load_config
        from pipeline.runner import record_stage
        record_stage(load_config(tmp_path / "stages.yaml"), "extract", None)
        return tmp_path

    return make


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


class PausedExtraction:
    """``pipeline run extract`` in a child process, paused after its first batch."""

    def __init__(self, project: Path, *overrides: str):
        self.release = project / "release"
        env = {**os.environ, ENV_VAR: "extract.batch:1:wait",
               RELEASE_ENV_VAR: str(self.release), "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", "extract", "--no-progress",
             "-c", str(project / "stages.yaml"), *[a for o in overrides for a in ("--set", o)]],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # a shell running tests in the background ignores SIGINT, and its children inherit
            # that: give this one Python's Ctrl-C handling back
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        waiting = Path(f"{self.release}.waiting")
        deadline = time.monotonic() + 120
        while not waiting.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"the extraction did not reach its pause: "
                            f"{self.process.communicate()}")
            time.sleep(0.05)

    def finish(self) -> tuple[int, str, str]:
        """Let it go on; its exit code, stdout and stderr."""
        self.release.touch()
        out, err = self.process.communicate(timeout=300)
        return self.process.returncode, out, err
