"""The leaderboard of a sweep: one row per trial, ranked by a validation metric.

Rows are :class:`TrialResult`; :func:`rank_trials` orders them (failed and NaN-scored last,
ties in declaration order), the writers save them as ``leaderboard.csv`` and ``.json``, and
:func:`format_leaderboard` prints the top as a table.

Parameters read as a table too. :func:`split_params` sorts them: a key that takes more than
one value across the trials of some head gets a column (one column per key, the union over
the heads, filled in every row whose trial has the key, blank where it has not); every other
key has one value in all the trials of each head that has it, and is said once per head
instead of in every row (a head with one trial has no column of its own).

The two files:

- ``leaderboard.csv``, for people, spreadsheets and scripts: the columns ``rank, head, trial,
  kind, status, val_accuracy, val_f1_macro, val_log_loss, train_accuracy, fit_seconds``, then
  ``param.<key>`` for each column key (the prefix keeps a parameter from ever clashing with
  a fixed column), then ``error, warnings``. Scores are rounded to 0.001 and seconds to 0.1,
  and are empty where there is none (a failed trial; a log loss for a head without
  probabilities). A parameter is written as in ``stages.yaml``: ``true``, ``null``, a float
  in full, a list of parts joined with ``+``. The parameters said once per head are not in
  the CSV.
- ``leaderboard.json``, the machine-readable record: every row with every field at full
  precision (``null`` for a missing score) and its complete ``params``. The report reads it,
  and :func:`read_leaderboard` reads it back.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from cache.files import write_atomic

from ..config.heads import METRICS
from ..json_values import json_safe

#: The fields of a leaderboard.json row, in order.
LEADERBOARD_COLUMNS = ("rank", "head", "trial", "kind", "status", "val_accuracy", "val_f1_macro",
                       "val_log_loss", "train_accuracy", "fit_seconds", "params", "error",
                       "warnings")
#: leaderboard.csv's columns before and after the ``param.<key>`` ones.
CSV_LEADING = LEADERBOARD_COLUMNS[:LEADERBOARD_COLUMNS.index("params")]
CSV_TRAILING = ("error", "warnings")
#: The prefix of a parameter's column in leaderboard.csv.
PARAM_PREFIX = "param."
#: Decimals of each score in the CSV and the tables: a validation split of a few hundred
#: images does not resolve accuracies finer than 0.001, nor a fit time finer than 0.1 s.
DECIMALS = {"val_accuracy": 3, "val_f1_macro": 3, "val_log_loss": 3, "train_accuracy": 3,
            "fit_seconds": 1}
#: The columns of :func:`leaderboard_table` before the parameters.
TABLE_COLUMNS = ("rank", "head", "trial", "kind", "status", "val_accuracy", "val_f1_macro",
                 "fit_seconds")
# Shorter headings for the terminal, where every character of width counts.
_TERMINAL_HEADINGS = {"val_accuracy": "val_acc", "val_f1_macro": "val_f1",
                      "fit_seconds": "fit_s"}
ERROR_WIDTH = 60  # characters of a failed trial's error shown in a table


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


@dataclass(frozen=True)
class ParamSplit:
    """The parameters of some trials, sorted for a table (see :func:`split_params`)."""

    columns: tuple[str, ...]                 # keys that vary within some head: a column each
    constant: dict[str, dict[str, Any]]      # per head, in order: the other keys, and values


def split_params(results: Iterable[TrialResult]) -> ParamSplit:
    """Which parameters get a column and which are said once per head.

    A key gets a column when it takes more than one value across the trials of at least one
    head (being absent from some of them counts as a value). Columns come in the order of the
    heads' first rows, each head's keys in its parameters' order. Every other key of a head
    has the same value in all its trials: ``constant[head]`` holds those keys, so that each
    value is said either in a column or once per head, never both. A head with a single trial
    varies nothing; its keys are constant unless another head made them a column.
    """
    by_head: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        by_head.setdefault(result.head, []).append(result.params)
    columns: dict[str, None] = {}
    for trials in by_head.values():
        for key in dict.fromkeys(key for params in trials for key in params):
            if len({_identity(params, key) for params in trials}) > 1:
                columns[key] = None
    constant = {head: {key: value for key, value in trials[0].items() if key not in columns}
                for head, trials in by_head.items()}
    return ParamSplit(tuple(columns), constant)


def _identity(params: dict[str, Any], key: str) -> str | None:
    """What makes two values of ``key`` the same: their JSON text (lists and dicts compare
    by content, 1 and 1.0 and True stay apart); None when the trial lacks the key."""
    if key not in params:
        return None
    return json.dumps(params[key], sort_keys=True, default=repr)


def param_text(value: Any) -> str:
    """A parameter as written in ``stages.yaml`` and in the CSV, in full: a list of parts
    joined with ``+`` (``block3_conv3.gap+gap``), ``true``/``false``/``null``, a float's
    shortest exact form (``0.001``, ``1e-06``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "+".join(param_text(v) for v in value)
    return json.dumps(value, sort_keys=True, default=repr)


def _shown(value: Any) -> str:
    """A parameter in a printed table: as :func:`param_text`, floats to 4 significant digits
    (a sampled 0.0012345678 reads as 0.001235)."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "+".join(_shown(v) for v in value)
    return param_text(value)


def said_once(params: dict[str, Any]) -> str:
    """A head's constant parameters as one line: ``features=block3_conv3.gap+gap, C=1``."""
    return ", ".join(f"{key}={_shown(value)}" for key, value in params.items())


def write_leaderboard(ranked: list[TrialResult], folder: Path) -> tuple[Path, Path]:
    """``leaderboard.csv`` (one row per trial, a column per varying parameter, scores
    rounded) and ``leaderboard.json`` (every field of every row, complete) in ``folder``."""
    split = split_params(ranked)
    columns = [*CSV_LEADING, *(PARAM_PREFIX + key for key in split.columns), *CSV_TRAILING]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for result in ranked:
        row = {column: getattr(result, column) for column in (*CSV_LEADING, *CSV_TRAILING)}
        row.update({column: _rounded(row[column], digits) for column, digits in DECIMALS.items()})
        row.update({PARAM_PREFIX + key: param_text(result.params[key])
                    for key in split.columns if key in result.params})
        writer.writerow(row)
    csv_path, json_path = folder / "leaderboard.csv", folder / "leaderboard.json"
    write_atomic(csv_path, buffer.getvalue())
    rows = [_json_row(result) for result in ranked]
    write_atomic(json_path, json.dumps(rows, indent=2, allow_nan=False) + "\n")
    return csv_path, json_path


def _rounded(value: float, digits: int) -> str:
    """A score for the CSV: ``digits`` decimals, empty when there is none."""
    return "" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _json_row(result: TrialResult) -> dict[str, Any]:
    row = asdict(result)
    return json_safe({c: row[c] for c in LEADERBOARD_COLUMNS})


def read_leaderboard(path: Path) -> list[TrialResult]:
    """The rows of a ``leaderboard.json``, best first, as :class:`TrialResult` (``null``
    scores back to NaN; fields a later release may add are ignored). Raises OSError or
    ValueError (JSONDecodeError included) for a file that cannot be read as one."""
    rows = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(rows, list):
        raise ValueError(f"{path}: not a list of leaderboard rows")
    known = {f.name for f in fields(TrialResult)}
    results = []
    for row in rows:
        if not isinstance(row, dict):
            raise ValueError(f"{path}: not a list of leaderboard rows")
        values = {key: value for key, value in row.items() if key in known}
        values.update({key: math.nan for key in DECIMALS if values.get(key) is None})
        try:
            results.append(TrialResult(**values))
        except TypeError as exc:  # a row that lacks head, trial, kind or params
            raise ValueError(f"{path}: {exc}") from None
    return results


@dataclass
class LeaderboardTable:
    """The top of a leaderboard as text cells, for the terminal and the report."""

    header: tuple[str, ...]                  # TABLE_COLUMNS, then the parameter columns
    rows: list[tuple[str, ...]]
    errors: list[str]                        # per row: its error, shortened; "" when ok
    constant: list[tuple[str, str, str]]     # per head shown: name, kind, said_once() text
    hidden: int                              # rows left out by the limit


def leaderboard_table(ranked: list[TrialResult], limit: int | None = None) -> LeaderboardTable:
    """The first ``limit`` rows of ``ranked`` (all when None) as text: scores to 0.001,
    seconds to 0.1, ``-`` for a missing score, a column per parameter that varies within a
    head shown, and each shown head's constant parameters once.

    The split into columns and constants is made over every trial of the heads shown, not
    only the rows shown: a parameter that varies among a head's hidden trials must not be
    said to be the same for the whole head.
    """
    shown = ranked if limit is None else ranked[:limit]
    heads = {result.head for result in shown}
    split = split_params(r for r in ranked if r.head in heads)
    kinds = {result.head: result.kind for result in shown}
    rows = [(str(r.rank), r.head, str(r.trial), r.kind, r.status,
             *(format_score(getattr(r, c), DECIMALS[c])
               for c in ("val_accuracy", "val_f1_macro", "fit_seconds")),
             *(_shown(r.params[key]) if key in r.params else "" for key in split.columns))
            for r in shown]
    return LeaderboardTable(
        header=(*TABLE_COLUMNS, *split.columns), rows=rows,
        errors=[(shorten(r.error) or "(no message)") if r.status != "ok" else ""
                for r in shown],
        constant=[(head, kinds[head], said_once(params))
                  for head, params in split.constant.items()],
        hidden=len(ranked) - len(shown))


def shorten(text: str, width: int = ERROR_WIDTH) -> str:
    """The first line of ``text``, cut to ``width`` characters (``...`` says it was cut)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[:width - 3] + "..."


def format_leaderboard(ranked: list[TrialResult], limit: int = 10) -> str:
    """The top ``limit`` trials as an aligned text table, a column per parameter that varies
    within a head, then one line per head shown with the parameters all its trials share. A
    failed trial shows ``-`` for its scores and its error, shortened, after its row."""
    table = leaderboard_table(ranked, limit)
    # Kind and status are left out for width: each head's kind is on its "every trial" line,
    # and a failed row says so, with its error, at its end.
    keep = [i for i, column in enumerate(table.header) if column not in ("kind", "status")]
    header = [_TERMINAL_HEADINGS.get(table.header[i], table.header[i]) for i in keep]
    rows = [[row[i] for i in keep] for row in table.rows]
    # Numbers line up on the right, words on the left.
    numeric = [all(_is_number(row[c]) or row[c] in ("", "-") for row in rows)
               and table.header[keep[c]] != "head" for c in range(len(header))]
    widths = [max([len(header[c]), *(len(row[c]) for row in rows)]) for c in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.rjust(width) if right else cell.ljust(width)
                         for cell, width, right in zip(cells, widths, numeric)).rstrip()

    lines = [line(header)]
    for row, error in zip(rows, table.errors):
        lines.append(line(row) + (f"  FAILED: {error}" if error else ""))
    if table.hidden:
        lines.append(f"  ... {table.hidden} more in leaderboard.csv")
    for head, kind, params in table.constant:
        lines.append(f"  every trial of {head} ({kind})" + (f": {params}" if params else ""))
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def format_score(value: float | None, digits: int = 3) -> str:
    """A score for people: 3 decimals (a thousandth is finer than any test set here
    resolves), ``-`` for a missing (None or NaN) one."""
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"
