"""The leaderboard as a table: parameters that vary get a column, the others are said once per
head; the CSV rounds its scores, the JSON keeps everything."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest

from pipeline.heads.leaderboard import (
    TrialResult,
    format_leaderboard,
    leaderboard_table,
    param_text,
    rank_trials,
    read_leaderboard,
    split_params,
    write_leaderboard,
)

TAPS = ["block3_conv3.gap", "block4_conv3.gap", "gap"]


def _results() -> list[TrialResult]:
    """logreg sweeps C; svm has C fixed and sweeps gamma; dense has one trial on taps; the
    last svm trial fails."""
    results = [TrialResult("logreg", i, "logistic_regression",
                           {"features": "gap", "scale": True, "C": c},
                           val_accuracy=0.5 + i / 10, val_f1_macro=0.45 + i / 10,
                           val_log_loss=1.23456, train_accuracy=0.98765, fit_seconds=1.26 * i)
               for i, c in enumerate([0.001, 0.1, 10.0])]
    results += [TrialResult("svm", i, "svc", {"features": "gmp", "C": 1.0, "gamma": gamma},
                            val_accuracy=0.6, val_f1_macro=0.58, fit_seconds=0.04)
                for i, gamma in enumerate(["scale", 0.01])]
    results[-1] = TrialResult("svm", 1, "svc", {"features": "gmp", "C": 1.0, "gamma": 0.01},
                              status="failed",
                              error="ValueError: " + "a very long explanation " * 10 + "\nmore")
    results.append(TrialResult("dense", 0, "dense",
                               {"features": TAPS, "normalize": "power", "max_depth": None},
                               val_accuracy=2 / 3, val_f1_macro=0.6543, fit_seconds=12.345))
    return rank_trials(results, "val_accuracy")


def test_a_key_varying_in_one_head_is_a_column_for_every_head_that_has_it():
    split = split_params(_results())
    # C varies in logreg: a column, filled for svm too (where it is 1.0 in every trial), so
    # it is not said again among svm's constants; gamma varies in svm
    assert set(split.columns) == {"C", "gamma"}
    assert split.constant["logreg"] == {"features": "gap", "scale": True}
    assert split.constant["svm"] == {"features": "gmp"}
    # a head with a single trial varies nothing: everything of it is said once
    assert split.constant["dense"] == {"features": TAPS, "normalize": "power",
                                       "max_depth": None}


def test_values_compare_by_content_and_a_missing_key_is_a_value():
    def trial(index: int, params: dict) -> TrialResult:
        return TrialResult("h", index, "k", params)

    same_list = split_params([trial(0, {"features": ["a", "b"]}),
                              trial(1, {"features": ["a", "b"]})])
    assert same_list.columns == () and same_list.constant["h"] == {"features": ["a", "b"]}
    other_list = split_params([trial(0, {"features": ["a", "b"]}), trial(1, {"features": ["a"]})])
    assert other_list.columns == ("features",) and other_list.constant["h"] == {}
    # 1 and 1.0 and True are different settings; a key that only some trials have varies
    assert split_params([trial(0, {"x": 1}), trial(1, {"x": 1.0})]).columns == ("x",)
    assert split_params([trial(0, {"x": 1}), trial(1, {"x": True})]).columns == ("x",)
    assert split_params([trial(0, {"x": 1}), trial(1, {})]).columns == ("x",)


def test_parameters_are_written_as_in_the_configuration():
    assert param_text(TAPS) == "block3_conv3.gap+block4_conv3.gap+gap"
    assert [param_text(v) for v in (True, None, 0.001, 1e-06, 10.0, 5, "rbf")] == \
        ["true", "null", "0.001", "1e-06", "10.0", "5", "rbf"]


def test_the_csv_has_a_column_per_varying_parameter_and_rounded_scores(tmp_path: Path):
    ranked = _results()
    csv_path, _ = write_leaderboard(ranked, tmp_path)
    with open(csv_path, encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == [
        "rank", "head", "trial", "kind", "status", "val_accuracy", "val_f1_macro",
        "val_log_loss", "train_accuracy", "fit_seconds", "param.C", "param.gamma", "error",
        "warnings"]
    assert [(r["head"], r["kind"]) for r in rows][0] == ("logreg", "logistic_regression")
    best = rows[0]
    assert (best["val_accuracy"], best["val_f1_macro"], best["val_log_loss"],
            best["train_accuracy"], best["fit_seconds"]) == ("0.700", "0.650", "1.235", "0.988",
                                                             "2.5")
    assert best["param.C"] == "10.0" and best["param.gamma"] == ""
    dense = next(r for r in rows if r["head"] == "dense")
    assert (dense["val_accuracy"], dense["fit_seconds"]) == ("0.667", "12.3")
    assert dense["param.C"] == "" and dense["val_log_loss"] == ""  # not its key; no score
    svm = [r for r in rows if r["head"] == "svm"]
    assert [(r["param.C"], r["param.gamma"]) for r in svm] == [("1.0", "scale"),
                                                                 ("1.0", "0.01")]
    assert svm[1]["status"] == "failed" and svm[1]["val_accuracy"] == ""
    assert svm[1]["error"].startswith("ValueError: a very long")  # in full, in the file
    assert all("features" not in column for column in reader.fieldnames)


def test_the_json_keeps_every_parameter_and_full_precision(tmp_path: Path):
    ranked = _results()
    _, json_path = write_leaderboard(ranked, tmp_path)
    rows = json.loads(json_path.read_text())
    assert [row["params"] for row in rows] == [r.params for r in ranked]
    dense = next(row for row in rows if row["head"] == "dense")
    assert dense["params"]["features"] == TAPS and dense["val_accuracy"] == pytest.approx(2 / 3)
    assert dense["val_log_loss"] is None
    back = read_leaderboard(json_path)
    assert [r.params for r in back] == [r.params for r in ranked]
    assert [r.rank for r in back] == [r.rank for r in ranked]
    assert math.isnan(next(r for r in back if r.head == "dense").val_log_loss)


def test_the_terminal_says_each_head_constants_once_and_aligns_the_columns():
    text = format_leaderboard(_results())
    lines = text.splitlines()
    assert lines[0].split() == ["rank", "head", "trial", "val_acc", "val_f1", "fit_s", "C",
                                "gamma"]
    rows = lines[1:7]
    # the constant parameters are said once, on their head's line, never in the rows
    assert text.count("features=gap") == 1 and text.count("normalize=power") == 1
    assert lines[7:] == [
        "  every trial of logreg (logistic_regression): features=gap, scale=true",
        "  every trial of dense (dense): features=block3_conv3.gap+block4_conv3.gap+gap, "
        "normalize=power, max_depth=null",
        "  every trial of svm (svc): features=gmp"]
    assert rows[0].split() == ["1", "logreg", "2", "0.700", "0.650", "2.5", "10"]
    assert rows[1].split() == ["2", "dense", "0", "0.667", "0.654", "12.3"]
    assert rows[3].split() == ["4", "svm", "0", "0.600", "0.580", "0.0", "1", "scale"]

    def spans(line: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", line)]

    # numbers end where their heading ends, the head's name starts where its heading starts
    heading = spans(lines[0])
    for row in rows:
        cells = spans(row)
        assert [cells[i][1] for i in (0, 2, 3, 4, 5)] == [heading[i][1] for i in (0, 2, 3, 4, 5)]
        assert cells[1][0] == heading[1][0]
    failed = rows[5]
    assert failed.split()[:6] == ["6", "svm", "1", "-", "-", "-"]
    assert "FAILED: ValueError: a very long" in failed and failed.endswith("...")
    assert "more" not in text  # the error's first line only


def test_the_columns_of_a_shortened_table_cover_the_heads_shown():
    ranked = _results()
    table = leaderboard_table(ranked, limit=1)  # logreg only: no gamma, svm not said
    assert table.header[-1] == "C" and "gamma" not in table.header
    assert [head for head, _, _ in table.constant] == ["logreg"] and table.hidden == 5
    assert "... 5 more in leaderboard.csv" in format_leaderboard(ranked, limit=1)
