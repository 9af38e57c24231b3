"""Run folders: every ``pipeline run`` writes its own, so experiments never overwrite each other.

``<runs.dir>/<YYYYmmdd-HHMMSS>-<stages>-<4 hex>/`` holds ``config.yaml`` (the resolved
configuration), ``metrics.json`` (flat keys, see :mod:`pipeline.metric_keys`), ``summary.txt``
(what the run printed) and what each stage adds (``dataset.csv``, ``leaderboard.csv``, ...).
Every file here is replaced atomically, so a run killed at any moment leaves whole files.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from cache.files import write_atomic

from . import metric_keys as keys
from .config import PipelineConfig
from .json_values import json_safe

SUMMARY_NAME = "summary.txt"
INTERRUPTED = "interrupted"
FAILED_PREFIX = "failed: "


@dataclass
class RunFolder:
    """One run's output folder and its accumulated metrics."""

    path: Path
    metrics: dict[str, float | int | str] = field(default_factory=dict)

    @classmethod
    def create(cls, config: PipelineConfig, stages: list[str]) -> RunFolder:
        """Make a new, uniquely named run folder and snapshot the configuration into it."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        name = f"{stamp}-{'+'.join(stages)}-{secrets.token_hex(2)}"
        path = config.runs.dir / name
        path.mkdir(parents=True, exist_ok=False)
        run = cls(path)
        snapshot = {"source": str(config.source) if config.source else None,
                    **config.to_yaml_dict()}
        write_atomic(path / "config.yaml", yaml.safe_dump(snapshot, sort_keys=False))
        return run

    def record(self, metrics: dict[str, float | int | str]) -> None:
        """Add flat metrics (``stage.name`` keys) and rewrite ``metrics.json``; NaN values (a
        score with nothing to score) are left out, as JSON has no NaN."""
        self.metrics.update({k: v for k, v in metrics.items()
                             if not (isinstance(v, float) and math.isnan(v))})
        write_atomic(self.path / "metrics.json",
                     json.dumps(self.metrics, indent=2, sort_keys=True) + "\n")

    def write_summary(self, lines: list[str]) -> None:
        """Replace ``summary.txt`` by ``lines``: what the run printed so far (its last line
        says ``interrupted`` or ``failed: ...`` when the run did not finish)."""
        write_atomic(self.path / SUMMARY_NAME, "\n".join(lines) + "\n",
                     errors="backslashreplace")


# Headline metrics shown by `pipeline runs`, in column order: (metrics.json key, column title)
HEADLINE_METRICS = (
    (keys.EXTRACT_IMAGES, "images"),
    (keys.EXTRACT_IMAGES_NEW, "new"),
    (keys.HEADS_BEST_NAME, "best head"),
    (keys.HEADS_BEST_VAL_ACCURACY, "head val"),
    (keys.HEADS_BEST_TEST_ACCURACY, "head test"),
    (keys.FINETUNE_TEST_ACCURACY, "finetune test"),
    (keys.SCRATCH_TEST_ACCURACY, "scratch test"),
)


@dataclass(frozen=True)
class RunSummary:
    """One run folder as ``pipeline runs`` lists it."""

    name: str
    status: str                       # ok, failed, interrupted, unfinished (running or killed)
    metrics: dict[str, float | int | str]


def list_runs(runs_dir: Path) -> list[RunSummary]:
    """Every run folder under ``runs_dir`` (oldest first), with its status and metrics."""
    if not runs_dir.is_dir():
        return []
    runs = []
    folders = [p for p in runs_dir.iterdir() if (p / "config.yaml").is_file()]
    # by creation (two runs can start within the same second), then by name
    folders.sort(key=lambda p: ((p / "config.yaml").stat().st_mtime_ns, p.name))
    for folder in folders:
        try:
            metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            metrics = {}
        try:
            last = (folder / SUMMARY_NAME).read_text(encoding="utf-8").strip().splitlines()[-1]
        except (OSError, IndexError):
            last = ""
        status = "interrupted" if last == INTERRUPTED else \
            "failed" if last.startswith(FAILED_PREFIX) else \
            "ok" if keys.RUN_FINISHED in metrics else "unfinished"
        runs.append(RunSummary(folder.name, status, metrics))
    return runs


def runs_json(runs: list[RunSummary], runs_dir: Path) -> dict:
    """``pipeline runs --json``: ``{"format": 1, "runs_dir": str, "runs": [{"name", "path",
    "status", "metrics"}]}``, oldest first; ``metrics`` is the run's metrics.json as written
    (flat keys, see :mod:`pipeline.metric_keys`)."""
    return {"format": 1, "runs_dir": str(runs_dir),
            "runs": [{"name": run.name, "path": str(runs_dir / run.name), "status": run.status,
                      # a metrics.json edited by hand may hold NaN, which JSON has not
                      "metrics": json_safe(dict(run.metrics))} for run in runs]}


def format_runs(runs: list[RunSummary], runs_dir: Path) -> str:
    """A table of runs with their headline metrics (``-`` where a run has none)."""
    if not runs:
        return f"{runs_dir}: no runs yet (`pipeline run extract` makes the first)"

    def cell(value) -> str:
        if value is None:
            return "-"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    titles = ["run", "status", *(title for _, title in HEADLINE_METRICS)]
    rows = [[run.name, run.status, *(cell(run.metrics.get(key)) for key, _ in HEADLINE_METRICS)]
            for run in runs]
    widths = [max(len(row[i]) for row in [titles, *rows]) for i in range(len(titles))]
    lines = ["  ".join(t.ljust(w) for t, w in zip(titles, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
