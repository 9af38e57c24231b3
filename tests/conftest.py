"""Fixtures of the whole suite; what they build is in :mod:`tests.support`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.projects import (
    FLOWERS,
    cached_document,
    make_image_folder,
    record_extract,
    tiny_document,
    write_cached_dataset,
    write_config,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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


@pytest.fixture
def cached_project(tmp_path: Path):
    """Make a project whose cache already holds features: ``make(heads, scheduler)``."""
    (tmp_path / "data").mkdir()

    def make(heads: dict, scheduler: str = "synchronous",
             per_split: dict[str, int] | None = None, taps: tuple[str, ...] = (),
             backbone: dict | None = None, **dataset) -> Path:
        write_config(tmp_path, cached_document(heads, scheduler, taps, **(backbone or {})))
        write_cached_dataset(tmp_path, per_split or {"train": 12, "validation": 6, "test": 6},
                             **dataset)
        record_extract(tmp_path)  # as if extract had run: `pipeline run heads` finds it up to date
        return tmp_path

    return make
