"""The heads stage on a cache: sweeps, leaderboard, selection on validation only, outputs."""

from __future__ import annotations

import csv
import json
import math
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from cache import FeatureStore, open_writer
from pipeline.config import HeadConfig, load_config
from pipeline.context import RunContext
from pipeline.data.table import ImageTable
from pipeline.data.view import read_view, write_view
from pipeline.errors import MissingViewError, NoTestImagesWarning
from pipeline.heads.leaderboard import TrialResult, rank_trials
from pipeline.heads.saving import load_head
from pipeline.heads.splits import LazySplit
from pipeline.heads.trial import TrialSpec
from pipeline.heads.trials import Trial, expand_trials
from tests.support.projects import make_image_folder, run_named, tiny_document, write_config

SWEEP = {
    "logreg": {"kind": "logistic_regression", "features": "gap", "scale": True,
               "sweep": {"params": {"C": [0.001, 0.1, 10.0]}}},
    "knn": {"kind": "knn", "features": "gmp",
            "sweep": {"params": {"n_neighbors": [1, 5], "weights": ["uniform", "distance"]}}},
}


def _run(project: Path, *overrides: str):
    config = load_config(project / "stages.yaml", list(overrides))
    run, report = run_named(config, "heads")
    return run, report


def _leaderboard(run) -> list[dict]:
    with open(run.path / "leaderboard.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_sweep_writes_an_ordered_leaderboard_and_tested_heads(cached_project):
    project = cached_project(SWEEP)
    run, report = _run(project)
    rows = _leaderboard(run)
    assert len(rows) == 3 + 4
    accuracies = [float(r["val_accuracy"]) for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    assert [int(r["rank"]) for r in rows] == list(range(1, 8))
    assert {r["head"] for r in rows} == {"logreg", "knn"}
    # what each head sweeps is a column; what it keeps is in the JSON, with every score whole
    assert {r["param.C"] for r in rows if r["head"] == "logreg"} == {"0.001", "0.1", "10.0"}
    assert {(r["param.n_neighbors"], r["param.weights"]) for r in rows if r["head"] == "knn"} \
        == {("1", "uniform"), ("1", "distance"), ("5", "uniform"), ("5", "distance")}
    assert all(re.fullmatch(r"\d\.\d{3}", r["val_accuracy"]) for r in rows)
    assert not any(column.startswith("param.features") for column in rows[0])
    as_json = json.loads((run.path / "leaderboard.json").read_text())
    assert [r["val_accuracy"] for r in as_json] == pytest.approx(accuracies, abs=5e-4)
    assert {r["params"]["features"] for r in as_json} == {"gap", "gmp"}
    assert "every trial of logreg (logistic_regression): features=gap" in report

    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["heads.trials"] == 7
    assert metrics["heads.best.name"] == rows[0]["head"]
    assert metrics["heads.best.val_accuracy"] == pytest.approx(accuracies[0], abs=5e-4)
    assert 0 <= metrics["heads.best.test_accuracy"] <= 1
    best = rows[0]["head"]
    for head in ("logreg", "knn"):
        folder = run.path / "heads" / head
        scores = json.loads((folder / "evaluation.json").read_text())
        # Only the overall best is ever evaluated on test.
        splits = ("validation", "test") if head == best else ("validation",)
        assert tuple(scores) == splits
        for split in splits:
            assert scores[split]["images"] == 18
            assert set(scores[split]["per_class"]) == {"cats", "dogs", "owls"}
            assert set(scores[split]["per_class"]["cats"]) == {"precision", "recall", "f1",
                                                               "support"}
            assert np.sum(scores[split]["confusion_matrix"]) == 18
            assert (folder / f"confusion_{split}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert scores[split]["log_loss"] is not None
        assert not (folder / "confusion_test.png").exists() or head == best
        selected = json.loads((folder / "head.json").read_text())["selected_by"]
        assert selected["metric"] == "val_accuracy"
    assert f"heads.{best}.test_accuracy" not in metrics
    assert "no image decoded, no extraction" in report


def test_the_saved_head_is_the_selected_trial_with_its_validation_score(cached_project):
    run, _ = _run(cached_project(SWEEP))
    best = json.loads((run.path / "leaderboard.json").read_text())[0]
    scores = json.loads((run.path / "heads" / best["head"] / "evaluation.json").read_text())
    assert scores["validation"]["accuracy"] == pytest.approx(best["val_accuracy"])


def test_selection_never_sees_the_test_split(cached_project):
    project = cached_project(SWEEP)
    first, _ = _run(project)
    # Scramble every test label and every test feature: nothing that selection produces
    # may change, only the test scores.
    config = load_config(project / "stages.yaml")
    store_path = next((project / "cache").glob("vgg16-*"))
    store = FeatureStore(project / "cache", store_path.name)
    view_file = RunContext(config).view_file
    view = read_view(view_file)
    rng = np.random.default_rng(5)
    scrambled = []
    for image in view.images:
        if image.split == "test":
            image = type(image)(image.path, str(rng.choice(view.classes)), "test",
                                "ff" + image.sha256[2:])
        scrambled.append(image)
    test_shas = [i.sha256 for i in scrambled if i.split == "test"]
    with open_writer(store, store.description) as writer:
        writer.add(test_shas, rng.normal(0, 50, (len(test_shas), 2, 2, 512)).astype(np.float32))
    view.images = ImageTable.from_rows(view.classes, scrambled)
    write_view(view, view_file)

    second, _ = _run(project)
    strip = [{k: v for k, v in r.items() if k != "fit_seconds"} for r in _leaderboard(first)]
    assert strip == [{k: v for k, v in r.items() if k != "fit_seconds"}
                     for r in _leaderboard(second)]
    before = json.loads((first.path / "metrics.json").read_text())
    after = json.loads((second.path / "metrics.json").read_text())
    assert before["heads.best.name"] == after["heads.best.name"]
    assert before["heads.best.test_accuracy"] != after["heads.best.test_accuracy"]


def test_the_stage_standardises_dense_heads_with_training_rows_only(cached_project):
    from pipeline.heads.dense import STANDARDIZE_LAYER
    from pipeline.heads.features import FeatureRows
    from pipeline.heads.splits import load_split

    dense = {"kind": "dense", "features": "gap", "params": {"epochs": 2}}
    project = cached_project({"dense": dense})
    run, _ = _run(project)
    head, _ = load_head(run.path / "heads" / "dense")
    layer = head.model.get_layer(STANDARDIZE_LAYER)
    ctx = RunContext(load_config(project / "stages.yaml"))
    view = ctx.require_view()
    rows = {split: FeatureRows("gap").transform(load_split(ctx.stores, view, split).x)
            for split in ("train", "validation", "test")}
    np.testing.assert_allclose(np.ravel(layer.adapt_mean), rows["train"].mean(axis=0),
                               rtol=1e-4, atol=1e-6)
    everything = np.concatenate(list(rows.values()))
    assert not np.allclose(np.ravel(layer.adapt_mean), everything.mean(axis=0), rtol=1e-4,
                           atol=1e-6)


def test_sweep_on_a_two_worker_local_cluster_equals_the_serial_one(cached_project):
    dense = {"kind": "dense", "features": "gap",
             "params": {"epochs": 2, "units": 8, "learning_rate": 0.01}}
    project = cached_project({**SWEEP, "dense": dense}, scheduler="local")
    parallel, report = _run(project, "cluster.workers=2")
    serial, _ = _run(project, "cluster.scheduler=synchronous")
    columns = ("head", "trial", "val_accuracy", "val_f1_macro", "param.C", "param.n_neighbors",
               "param.weights")
    sklearn_rows = [r for r in _leaderboard(parallel) if r["head"] != "dense"]
    assert [[r[c] for c in columns] for r in sklearn_rows] == \
        [[r[c] for c in columns] for r in _leaderboard(serial) if r["head"] != "dense"]
    assert "dask local" in report
    # The models that came back from the workers are the ones that were scored there.
    for row in _leaderboard(parallel):
        scores = json.loads((parallel.path / "heads" / row["head"] / "evaluation.json")
                            .read_text())
        best = min((r for r in _leaderboard(parallel) if r["head"] == row["head"]),
                   key=lambda r: int(r["rank"]))
        assert scores["validation"]["accuracy"] == pytest.approx(float(best["val_accuracy"]),
                                                                 abs=5e-4)  # CSV: 0.001


def test_a_failing_setting_is_recorded_and_the_sweep_goes_on(cached_project):
    # Each value is valid alone; l1 with the lbfgs solver is not, which only fit() finds out.
    project = cached_project({"lr": {"kind": "logistic_regression", "params": {"solver": "lbfgs"},
                                     "sweep": {"params": {"l1_ratio": [0.0, 1.0]}}}})
    run, report = _run(project)
    rows = _leaderboard(run)
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert "l1" in rows[1]["error"] or "penalty" in rows[1]["error"]
    assert rows[1]["val_accuracy"] == ""


def test_no_image_is_decoded_and_no_backbone_runs(tmp_path: Path, monkeypatch):
    make_image_folder(tmp_path / "data", {"cats": 6, "dogs": 6})
    document = tiny_document()
    document["data"]["split"] = {"train": 0.5, "validation": 0.25, "test": 0.25, "seed": 3}
    document["stages"]["heads"] = {"models": {"lr": {"kind": "logistic_regression"}}}
    document["cluster"] = {"scheduler": "synchronous"}
    write_config(tmp_path, document)
    config = load_config(tmp_path / "stages.yaml")
    run_named(config, "extract")

    import pipeline.backbone.model
    import pipeline.data.batches

    def forbidden(*args, **kwargs):
        raise AssertionError("the heads stage must not decode images or run the backbone")

    # the one decode path, and the one place the backbone is built
    monkeypatch.setattr(pipeline.data.batches, "decode_file", forbidden)
    monkeypatch.setattr(pipeline.backbone.model, "build_feature_extractor", forbidden)
    for _ in range(2):  # sweeping twice reuses the same cache
        run, report = run_named(config, "heads")
        assert "no extraction" in report
        assert (run.path / "heads" / "lr" / "model.skops").is_file()


def test_heads_without_a_cache_say_to_extract_first(tmp_path: Path):
    make_image_folder(tmp_path / "data", {"cats": 2, "dogs": 2})
    document = tiny_document()
    document["stages"]["heads"] = {"models": {"lr": {"kind": "logistic_regression"}}}
    write_config(tmp_path, document)
    with pytest.raises(MissingViewError, match="run `pipeline run extract` first"):
        run_named(load_config(tmp_path / "stages.yaml"), "heads")


def test_saved_heads_from_the_stage_reload_and_predict_the_same(cached_project):
    project = cached_project({"mlp": {"kind": "mlp", "features": "gap",
                                      "params": {"hidden_layer_sizes": [16], "max_iter": 50,
                                                 "early_stopping": False}}})
    run, _ = _run(project)
    assert "ConvergenceWarning" in _leaderboard(run)[0]["warnings"]  # 50 iterations are few
    head, metadata = load_head(run.path / "heads" / "mlp")
    assert metadata["classes"] == ["cats", "dogs", "owls"]
    config = load_config(project / "stages.yaml")
    store = FeatureStore(config.cache.dir, metadata["fingerprint"])
    view = read_view(RunContext(config).view_file)
    test = view.select("test")
    predicted = head.predict(store.get([i.sha256 for i in test]))
    accuracy = np.mean([view.classes[p] == i.label for p, i in zip(predicted, test)])
    saved = json.loads((run.path / "heads" / "mlp" / "evaluation.json").read_text())
    assert accuracy == pytest.approx(saved["test"]["accuracy"])


def test_random_search_is_reproducible_and_bounded():
    from pipeline.config import parse_config
    document = {"data": {"root": "."}, "stages": {"heads": {"models": {"sgd": {
        "kind": "sgd", "sweep": {"method": "random", "n_trials": 6, "seed": 4, "params": {
            "alpha": {"loguniform": [1e-5, 1e-1]}, "penalty": ["l2", "l1"],
            "max_iter": {"randint": [5, 9]}}}}}}}}
    heads = parse_config(document).stages.heads
    first, again = expand_trials(heads), expand_trials(heads)
    assert [t.spec.overrides for t in first] == [t.spec.overrides for t in again]
    assert len(first) == 6
    assert all(1e-5 <= t.spec.overrides["alpha"] <= 1e-1 and 5 <= t.spec.overrides["max_iter"] <= 9
               and isinstance(t.spec.overrides["max_iter"], int) for t in first)
    assert len({t.spec.overrides["alpha"] for t in first}) == 6


def test_ranking_puts_failures_last_and_minimises_log_loss():
    def result(name, accuracy, loss, status="ok"):
        return TrialResult(name, 0, "x", {}, status=status, val_accuracy=accuracy,
                           val_log_loss=loss)
    results = [result("a", 0.5, 0.9), result("b", math.nan, math.nan, "failed"),
               result("c", 0.9, 0.2), result("d", 0.7, math.nan)]
    assert [r.head for r in rank_trials(results, "val_accuracy")] == ["c", "d", "a", "b"]
    assert [r.head for r in rank_trials(results, "val_log_loss")] == ["c", "a", "b", "d"]


def _store_with(tmp_path: Path, n: int, shape=(4, 4, 64)):
    rng = np.random.default_rng(0)
    means = rng.normal(0, 1, (2, *shape)).astype(np.float32)
    y = np.arange(n) % 2
    shas = [f"{i:064x}" for i in range(n)]
    store = FeatureStore(tmp_path, "fp")
    with open_writer(store, {"output_shape": list(shape)}, shard_rows=500) as writer:
        for start in range(0, n, 500):
            rows = means[y[start:start + 500]] + rng.normal(
                0, 1, (len(y[start:start + 500]), *shape)).astype(np.float32)
            writer.add(shas[start:start + 500], rows)
    return shas, y


def _peak_while_fitting(folder: Path, rows: int):
    shas, y = _store_with(folder, rows)
    split = LazySplit("train", folder, {"output": "fp"}, tuple(shas), y)
    spec = TrialSpec("sgd", 0, HeadConfig(kind="sgd", scale=True,
                                          incremental={"chunk_rows": 100, "epochs": 2}))
    tracemalloc.start()
    try:
        head = Trial(spec).fit(split, split, n_classes=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, head, shas, y


def test_incremental_sgd_learns_from_the_cache_in_bounded_memory(tmp_path: Path):
    # 1,500 and 3,000 rows of 4 KiB (6 and 12 MiB). Features are held a chunk at a time; only
    # the index (manifest entries, sha256, labels: well under 1 KiB a row) grows with the cache.
    small, _, _, _ = _peak_while_fitting(tmp_path / "small", 1500)
    peak, head, shas, y = _peak_while_fitting(tmp_path / "large", 3000)
    assert peak < 6 * 2 ** 20, f"peak {peak / 2 ** 20:.1f} MiB while training on 12 MiB"
    per_extra_row = (peak - small) / 1500
    assert per_extra_row < 1024, f"{per_extra_row:.0f} bytes more per row of 4,096 bytes"
    x = FeatureStore(tmp_path / "large", "fp").get(shas[:200])
    assert np.mean(head.predict(x) == y[:200]) > 0.95


def test_incremental_head_in_the_stage(cached_project):
    project = cached_project({"sgd": {"kind": "sgd", "features": "gap", "scale": True,
                                      "incremental": {"chunk_rows": 7, "epochs": 3}}})
    run, _ = _run(project)
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["heads.best.name"] == "sgd" and metrics["heads.best.val_accuracy"] > 0.5


def test_two_classes_an_empty_test_split_and_log_loss_selection(cached_project):
    project = cached_project({"lr": {"kind": "logistic_regression", "features": "gap",
                                     "sweep": {"params": {"C": [0.001, 1.0]}}},
                              "svm": {"kind": "linear_svm", "features": "gap"}},
                             per_split={"train": 10, "validation": 5, "test": 0},
                             classes=("cats", "dogs"))
    with pytest.warns(NoTestImagesWarning):
        run, report = _run(project, "stages.heads.metric=val_log_loss")
    rows = _leaderboard(run)
    losses = [float(r["val_log_loss"]) for r in rows if r["val_log_loss"]]
    assert losses == sorted(losses) and rows[-1]["head"] == "svm"  # no probabilities: last
    assert "test accuracy - (0 test images" in report
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert "heads.best.test_accuracy" not in metrics and metrics["heads.best.name"] == "lr"


def test_a_class_missing_from_training_gets_zero_probability(cached_project):
    project = cached_project({"lr": {"kind": "logistic_regression", "features": "gap"}},
                             per_split={"train": 8, "validation": 4, "test": 4},
                             drop={("train", "owls")})
    run, _ = _run(project)
    head, metadata = load_head(run.path / "heads" / "lr")
    config = load_config(project / "stages.yaml")
    store = FeatureStore(config.cache.dir, metadata["fingerprint"])
    x = store.get([i.sha256 for i in read_view(RunContext(config).view_file).select("test")])
    proba = head.predict_proba(x)
    assert proba.shape == (len(x), 3) and np.all(proba[:, 2] == 0)


def test_a_diverging_trial_keeps_its_accuracy_and_the_sweep_goes_on(cached_project, monkeypatch):
    from pipeline.heads.kind import FittedHead

    project = cached_project({"lr": {"kind": "logistic_regression", "features": "gap",
                                     "sweep": {"params": {"C": [0.1, 1.0]}}}})
    real = FittedHead.predict_proba
    monkeypatch.setattr(FittedHead, "predict_proba",
                        lambda self, x: np.full_like(real(self, x), np.nan))
    run, _ = _run(project)
    rows = _leaderboard(run)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all(r["val_log_loss"] == "" and float(r["val_accuracy"]) > 0 for r in rows)


def test_every_trial_failing_is_one_clear_error(cached_project):
    from pipeline.errors import PipelineError

    project = cached_project({"lr": {"kind": "logistic_regression", "params": {"solver": "lbfgs",
                                                                            "l1_ratio": 1.0}}})
    with pytest.raises(PipelineError, match="every trial of every head failed"):
        _run(project)


TAPS = ("block3_conv3.gap", "block4_conv3.gmp")
ON_TAPS = {"features": list(TAPS), "normalize": "power"}


def test_heads_on_taps_in_the_stage_read_only_their_sources(cached_project, monkeypatch):
    project = cached_project({
        "logreg": {"kind": "logistic_regression", **ON_TAPS,
                   "sweep": {"params": {"C": [1.0, 100.0], "normalize": ["l2", "power"]}}},
        "dense": {"kind": "dense", **ON_TAPS, "params": {"epochs": 3, "learning_rate": 0.01}},
        "sgd": {"kind": "sgd", **ON_TAPS, "incremental": {"chunk_rows": 7, "epochs": 3}},
    }, taps=TAPS)
    read = []
    original = FeatureStore.get

    def get(store, keys, *args, **kwargs):
        read.append(store.fingerprint)
        return original(store, keys, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "get", get)
    run, _ = _run(project)
    ctx = RunContext(load_config(project / "stages.yaml"))
    taps = {tap: ctx.tap_fingerprints[tap].id for tap in TAPS}
    assert read and set(read) <= set(taps.values())  # the output tensor is never read
    rows = _leaderboard(run)
    assert len(rows) == 4 + 1 + 1 and all(r["status"] == "ok" for r in rows)
    assert float(rows[0]["val_accuracy"]) > 0.7  # chance is 1/3
    for name in ("logreg", "dense", "sgd"):
        metadata = json.loads((run.path / "heads" / name / "head.json").read_text())
        assert metadata["sources"] == taps and "feature_shape" not in metadata
    # a reloaded head predicts the test split from the taps' stores as the stage scored it
    best = json.loads((run.path / "metrics.json").read_text())["heads.best.name"]
    head, _ = load_head(run.path / "heads" / best)
    view = read_view(ctx.view_file)
    test = view.select("test")
    x = {tap: ctx.stores[tap].get([i.sha256 for i in test]) for tap in TAPS}
    accuracy = np.mean([view.classes[p] == i.label for p, i in zip(head.predict(x), test)])
    saved = json.loads((run.path / "heads" / best / "evaluation.json").read_text())
    assert accuracy == pytest.approx(saved["test"]["accuracy"])
    with open(run.path / "heads" / best / "predictions_test.csv", encoding="utf-8") as fh:
        answers = list(csv.DictReader(fh))
    assert [a["path"] for a in answers] == [i.path for i in test]
    assert np.mean([a["class"] == a["predicted"] for a in answers]) == pytest.approx(accuracy)


def test_the_probe_ranks_every_cached_part_on_validation(cached_project):
    project = cached_project({"lr": {"kind": "logistic_regression"}}, taps=TAPS,
                             noise_taps=("block4_conv3.gmp",),
                             per_split={"train": 40, "validation": 20, "test": 2})
    config = load_config(project / "stages.yaml")
    run, report = run_named(config, "probe")
    table = json.loads((run.path / "probe.json").read_text())
    assert [row["rank"] for row in table] == [1, 2, 3, 4, 5]
    assert {row["feature"] for row in table} == {*TAPS, "flatten", "gap", "gmp"}
    assert [row["val_accuracy"] for row in table] == sorted(
        (row["val_accuracy"] for row in table), reverse=True)
    by_part = {row["feature"]: row for row in table}
    assert by_part["block3_conv3.gap"]["dimension"] == 256
    assert by_part["flatten"]["dimension"] == 2048
    assert all(row["C"] in config.stages.probe.C for row in table)
    # noise scores near chance (1/3), the class-separable tap far above it
    assert by_part["block3_conv3.gap"]["val_accuracy"] > 0.8
    assert by_part["block4_conv3.gmp"]["val_accuracy"] < 0.55
    assert table[-1]["feature"] == "block4_conv3.gmp"
    with open(run.path / "probe.csv", encoding="utf-8") as fh:
        assert [r["feature"] for r in csv.DictReader(fh)] == [r["feature"] for r in table]
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["probe.features"] == 5
    assert metrics["probe.best.feature"] == table[0]["feature"]
    assert "probe: a logistic regression per cached part" in report


def test_with_keep_output_false_only_taps_are_cached_and_read(cached_project):
    project = cached_project({"lr": {"kind": "logistic_regression", **ON_TAPS}},
                             taps=TAPS, backbone={"keep_output": False})
    ctx = RunContext(load_config(project / "stages.yaml"))
    assert set(ctx.stores) == set(TAPS) and not (ctx.store.path / "shards").exists()
    run, _ = _run(project)
    assert _leaderboard(run)[0]["status"] == "ok"
    probe, _ = run_named(load_config(project / "stages.yaml"), "probe")
    assert {row["feature"] for row in json.loads((probe.path / "probe.json").read_text())} \
        == set(TAPS)


@pytest.mark.parametrize("backbone, head, message", [
    ({}, {"features": ["gap", "block5_conv1.gap"]},
     "stages.heads.models.lr.features: block5_conv1.gap is not in backbone.taps (extract "
     "caches only those: block3_conv3.gap, block4_conv3.gmp)"),
    ({"keep_output": False}, {"features": "gap"},
     "stages.heads.models.lr.features: gap is a part of the output tensor, which "
     "backbone.keep_output: false leaves out of the cache"),
])
def test_a_head_on_a_part_the_cache_does_not_keep_is_a_config_error(cached_project, backbone,
                                                                    head, message):
    from pipeline.errors import ConfigError
    project = cached_project({"lr": {"kind": "logistic_regression", **head}}, taps=TAPS,
                             backbone=backbone)
    with pytest.raises(ConfigError, match=re.escape(message)):
        _run(project)
