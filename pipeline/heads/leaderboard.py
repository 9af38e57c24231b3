"""The leaderboard of a sweep: one row per trial, ranked by a validation metric.

Rows are :class:`TrialResult`; :func:`rank_trials` orders them (failed and NaN-scored last,
ties in declaration order), and the writers save them as ``leaderboard.csv`` and ``.json`` and
print the top as a table.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cache.files import write_atomic

from ..config.heads import METRICS
from ..evaluate import json_safe

LEADERBOARD_COLUMNS = ("rank", "head", "trial", "kind", "status", "val_accuracy", "val_f1_macro",
                       "val_log_loss", "train_accuracy", "fit_seconds", "params", "error",
                       "warnings")


@dataclass
class TrialResult:
    """One trial's parameters, validation scores and fit time (a leaderboard row)."""

    head: str
    trial: int
    kind: str
    params: dict[str, Any]
    status: str = "ok"               # ok | failed
    val_accuracy: float = math.nan
    val_f1_macro: float = math.nan
    val_log_loss: float = math.nan   # NaN for heads without probabilities
    train_accuracy: float = math.nan
    fit_seconds: float = math.nan
    error: str = ""
    warnings: str = ""               # e.g. ConvergenceWarning: raise max_iter
    rank: int = 0


def rank_key(result: TrialResult, order: int, metric: str) -> tuple:
    """Sort key: usable scores first, best first, then declaration order (deterministic)."""
    value = getattr(result, metric)
    usable = result.status == "ok" and not math.isnan(value)
    sign = 1.0 if METRICS[metric] == "max" else -1.0
    return (0 if usable else 1, -sign * value if usable else 0.0, order)


def rank_trials(results: list[TrialResult], metric: str) -> list[TrialResult]:
    """Results best first by the validation ``metric``; failed and NaN-scored trials last.

    Ties keep declaration order (head, then trial), so the ranking is deterministic.
    """
    ranked = [r for _, r in sorted(enumerate(results),
                                   key=lambda item: rank_key(item[1], item[0], metric))]
    for position, result in enumerate(ranked, start=1):
        result.rank = position
    return ranked


def write_leaderboard(ranked: list[TrialResult], folder: Path) -> tuple[Path, Path]:
    """``leaderboard.csv`` (one row per trial) and ``leaderboard.json`` in ``folder``."""
    rows = [_row(r) for r in ranked]
    csv_path, json_path = folder / "leaderboard.csv", folder / "leaderboard.json"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LEADERBOARD_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "params": json.dumps(row["params"], sort_keys=True)})
    write_atomic(csv_path, buffer.getvalue())
    write_atomic(json_path, json.dumps(rows, indent=2, allow_nan=False) + "\n")
    return csv_path, json_path


def _row(result: TrialResult) -> dict[str, Any]:
    row = asdict(result)
    return json_safe({c: row[c] for c in LEADERBOARD_COLUMNS})


def _shown(value: Any) -> str:
    """A parameter value in the printed table: 4 significant digits for a float, a list of
    parts as their concatenation (``block3_conv3.gap+gap``)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value))
    return str(value)


def format_leaderboard(ranked: list[TrialResult], limit: int = 10) -> str:
    """The top ``limit`` trials as a text table."""
    lines = [f"{'rank':>4}  {'head':<16} {'trial':>5}  {'val_acc':>7}  {'val_f1':>6}  "
             f"{'fit_s':>6}  params"]
    for r in ranked[:limit]:
        params = ", ".join(f"{k}={_shown(v)}" for k, v in r.params.items())
        if r.status != "ok":
            params = f"FAILED {r.error[:60]}"
        lines.append(f"{r.rank:>4}  {r.head[:16]:<16} {r.trial:>5}  "
                     f"{format_score(r.val_accuracy):>7}  {format_score(r.val_f1_macro):>6}  "
                     f"{format_score(r.fit_seconds, 2):>6}  {params}")
    if len(ranked) > limit:
        lines.append(f"      ... {len(ranked) - limit} more in leaderboard.csv")
    return "\n".join(lines)


def format_score(value: float | None, digits: int = 4) -> str:
    """A score for tables: ``-`` for a missing (None or NaN) one."""
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"

