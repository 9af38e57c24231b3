"""``pipeline.lock``: what each stage last ran with, read freely and updated under a file lock.

The lock (JSON, beside stages.yaml) records per stage the parameter values it ran with, the
value of each of its inputs, the run folder that holds its outputs and when it finished. Two
``pipeline run`` of different stages on one stages.yaml may finish at the same moment: each
reads, changes and rewrites the file while holding ``.pipeline.lock.lock`` (an OS lock,
released by the kernel if the holder dies), and the rewrite is atomic, so neither entry is lost
and a reader never sees half a file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import filelock

from cache.files import write_atomic

from ..config import PipelineConfig

LOCK_NAME = "pipeline.lock"
LOCK_FORMAT = 1
UPDATE_TIMEOUT = 120.0  # seconds to wait for another run's update (each takes milliseconds)


def lock_path(config: PipelineConfig) -> Path:
    """``pipeline.lock`` beside stages.yaml (beside the runs folder for an in-memory config)."""
    folder = config.source.resolve().parent if config.source else config.runs.dir.parent
    return folder / LOCK_NAME


def read_lock(config: PipelineConfig) -> dict[str, Any]:
    """The lock's contents ({} when there is none, it cannot be read, or has another
    format)."""
    try:
        lock = json.loads(lock_path(config).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return lock if isinstance(lock, dict) and lock.get("format") == LOCK_FORMAT else {}


def locked_stages(config: PipelineConfig) -> dict[str, dict[str, Any]]:
    """{stage: its entry} as the lock has them now."""
    return read_lock(config).get("stages", {})


def update_lock(config: PipelineConfig, stage: str,
                make_entry: Callable[[dict[str, dict[str, Any]]], dict[str, Any]]) -> None:
    """Set ``stage``'s entry to ``make_entry(entries)`` (``entries``: every stage's, read under
    the lock) and rewrite the lock, all while holding the update lock."""
    path = lock_path(config)
    with filelock.FileLock(str(path.with_name(f".{path.name}.lock")), timeout=UPDATE_TIMEOUT):
        lock = read_lock(config) or {"format": LOCK_FORMAT, "stages": {}}
        lock["stages"][stage] = json.loads(json.dumps(make_entry(lock["stages"]), default=str))
        write_atomic(path, json.dumps(lock, indent=2, sort_keys=True) + "\n")
