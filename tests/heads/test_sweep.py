"""How a sweep reads the cache and where it runs: the executor chosen by the sweep's size,
features read once per feature setting (and not copied to workers), training accuracy on a
sample, one prediction pass per split, and the kNN size limit."""

from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ClusterConfig, HeadsConfig, load_config
from pipeline.context import RunContext
from pipeline.heads import sweep
from pipeline.heads.features import FeatureRows, PreparedRows, feature_rows, normalize_in_place
from pipeline.heads.kind import FittedHead, HeadKind
from pipeline.heads.registry import head_kind
from pipeline.heads.run import _training_data
from pipeline.heads.splits import LabelledSplit, LazySplit, Reading, SplitReader, TrainingData
from pipeline.heads.trials import expand_trials
from tests.support.projects import run_named

TAP = "block3_conv3.gap"
HEADS = {
    "logreg": {"kind": "logistic_regression", "features": ["gap", TAP], "normalize": "power",
               "sweep": {"params": {"C": [0.1, 10.0]}}},
    "knn": {"kind": "knn", "features": ["gap", TAP], "normalize": "power",
            "sweep": {"params": {"n_neighbors": [1, 3]}}},
    "gmp": {"kind": "logistic_regression", "features": "gmp"},
}


def _trials(models: dict):
    return expand_trials(HeadsConfig.model_validate({"models": models}))


def _named_rows(train: int, validation: int = 10, shapes=None) -> TrainingData:
    """Training data of ``train`` rows that no cache holds (for decisions made on sizes)."""
    def split(name: str, count: int) -> LazySplit:
        return LazySplit(name, Path("/nonexistent"), {"output": "x"},
                         tuple(f"{i:064x}" for i in range(count)), np.zeros(count, np.int64))
    return TrainingData(("a", "b"), split("train", train), split("validation", validation),
                        shapes or {"output": (4, 4, 512), TAP: (256,)})


# -- where the sweep runs ---------------------------------------------------------------------

@pytest.mark.parametrize("scheduler, expected", [("synchronous", True), ("local", False),
                                                 ("tcp://10.0.0.5:8786", False)])
def test_a_named_scheduler_is_obeyed_whatever_the_size(scheduler, expected):
    trials = _trials(HEADS)
    for rows in (10, 10**6):
        assert sweep.runs_in_process(trials, _named_rows(rows), ClusterConfig(
            scheduler=scheduler), memory_budget_mb=1024) is expected


def test_auto_keeps_small_sweeps_in_process_and_sends_big_ones_to_a_local_cluster():
    trials, cluster = _trials(HEADS), ClusterConfig(scheduler="auto", workers=2)
    assert ClusterConfig().scheduler == "auto"
    # 2,000 rows of 768 or 512 numbers, 5 trials: a cluster's start costs more than it saves
    assert sweep.runs_in_process(trials, _named_rows(2000), cluster, 1024)
    # 100,000 rows: enough work, and three copies of 0.3 GB of rows fit in 1 GB
    assert not sweep.runs_in_process(trials, _named_rows(100_000), cluster, 1024)
    # ... but not in 0.5 GB: the rows are read once, here
    assert sweep.runs_in_process(trials, _named_rows(100_000), cluster, 512)
    # one core, or one trial: nothing to run side by side
    assert sweep.runs_in_process(trials, _named_rows(100_000),
                                 ClusterConfig(scheduler="auto", workers=1), 4096)
    assert sweep.runs_in_process(_trials({"lr": {"kind": "logistic_regression"}}),
                                 _named_rows(100_000), cluster, 4096)
    # trials that read the cache a chunk at a time are work too, and hold little
    incremental = {"sgd": {"kind": "sgd", "features": "flatten", "incremental": {},
                           "sweep": {"params": {"alpha": [0.1, 0.01, 0.001]}}}}
    assert not sweep.runs_in_process(_trials(incremental), _named_rows(10_000), cluster, 16)


def test_an_auto_sweep_of_a_small_project_runs_in_this_process(cached_project):
    project = cached_project({"logreg": HEADS["logreg"]}, scheduler="auto", taps=(TAP,))
    _, report = run_named(load_config(project / "stages.yaml"), "heads")
    assert "(in this process)" in report


# -- what a trial reads -----------------------------------------------------------------------

def _spy(monkeypatch, method: str, note) -> list:
    """What ``note(arguments, result)`` makes of each call of ``TrainingData.<method>``."""
    seen = []
    original = getattr(TrainingData, method)

    def spied(self, *args):
        result = original(self, *args)
        seen.append(note(args, result))
        return result

    monkeypatch.setattr(TrainingData, method, spied)
    return seen


def _counting_reads(monkeypatch) -> list:
    """(split, source) of each read of the cache."""
    return _spy(monkeypatch, "_read", lambda args, _: (args[0].name, args[1]))


def test_rows_are_made_once_per_feature_setting(cached_project, monkeypatch):
    project = cached_project(HEADS, taps=(TAP,))
    ctx = RunContext(load_config(project / "stages.yaml"))
    view = ctx.require_view(("output", TAP))
    data = _training_data(ctx.stores, view, augmented=False)
    reads = _counting_reads(monkeypatch)
    held_while_reading = _spy(monkeypatch, "_labelled", lambda *_: list(data._held))
    trials = _trials(HEADS)
    outcome = sweep._run_in_process(trials, data, "val_accuracy", _NoBar())
    # logreg and knn share a setting: read once, for both splits; gmp reads the output again
    assert sorted(reads) == sorted([("train", "output"), ("train", TAP),
                                    ("validation", "output"), ("validation", TAP),
                                    ("train", "output"), ("validation", "output")])
    assert [(r.head, r.trial) for r in outcome.results] == [(t.head, t.index) for t in trials]
    assert all(r.status == "ok" for r in outcome.results)
    # each reading was let go after its last trial, before the next one's rows were made
    assert held_while_reading == [[]] * 4 and not data._held  # two readings, two splits

    # the rows are what the head's own transform makes of the raw features
    gap_tap = next(t for t in trials if t.head == "knn").reading
    train, _ = data.splits(gap_tap)
    raw, _ = data.splits(Reading(("output", TAP)))
    assert isinstance(train.x, PreparedRows)
    np.testing.assert_allclose(FeatureRows(["gap", TAP], "power").transform(raw.x),
                               train.x.rows, rtol=1e-6)


def test_a_process_keeps_the_readings_that_fit_its_budget(cached_project, monkeypatch):
    project = cached_project(HEADS, taps=(TAP,))
    ctx = RunContext(load_config(project / "stages.yaml"))
    data = _training_data(ctx.stores, ctx.require_view(("output", TAP)), augmented=False)
    gap = Reading(("output",), ("gap",), "none")
    both = Reading(("output", TAP), ("gap", TAP), "power")
    reads = _counting_reads(monkeypatch)
    for reading in (gap, both, gap, both):  # trials of two settings taking turns on a worker
        data.splits(reading)
    assert len(reads) == 2 + 4  # each setting read once
    tight = data.within(max(data.nbytes(gap), data.nbytes(both)))
    reads.clear()
    for reading in (gap, both, gap):
        tight.splits(reading)
    assert len(reads) == 2 + 4 + 2 and len(tight._held) == 1  # one at a time
    tight.release()
    assert not tight._held


def test_a_source_is_read_in_blocks_while_rows_are_made(cached_project, monkeypatch):
    from pipeline.heads import features

    project = cached_project(HEADS, taps=(TAP,))
    ctx = RunContext(load_config(project / "stages.yaml"))
    data = _training_data(ctx.stores, ctx.require_view(("output", TAP)), augmented=False)
    sizes = _spy(monkeypatch, "_read", lambda _, got: len(got))
    monkeypatch.setattr(features, "FEATURE_ROWS_BLOCK", 5)
    train, validation = data.splits(Reading(("output",), ("gmp",), "l2"))
    assert max(sizes) == 5 and sum(sizes) == len(train) + len(validation)
    # one open store (and entry index) for every block of both splits
    assert list(data._stores) == [ctx.stores["output"].fingerprint]
    expected = FeatureRows("gmp", "l2").transform(
        {"output": ctx.stores["output"].get(list(data.train.sha256))})
    np.testing.assert_allclose(train.x.rows, expected, rtol=1e-6)


def test_training_data_travels_without_its_features_unless_they_are_carried(cached_project):
    project = cached_project(HEADS, taps=(TAP,))
    ctx = RunContext(load_config(project / "stages.yaml"))
    data = _training_data(ctx.stores, ctx.require_view(("output", TAP)), augmented=False)
    reading = Reading(("output", TAP))
    train, validation = data.splits(reading)
    features = sum(a.nbytes for split in (train, validation) for a in split.x.values())
    sent = pickle.loads(pickle.dumps(data))
    assert len(pickle.dumps(data)) < features / 10 and sent._held == {}
    # a reader made here is kept here, and stays here
    reader = data.train.reader()
    assert data.train.reader() is reader and len(reader.sources["output"]) == len(data.train)
    sent = pickle.loads(pickle.dumps(data.train))
    assert "_reader" not in vars(sent) and sent.reader() is not reader
    x, _ = sent.reader().read([2, 0])
    np.testing.assert_array_equal(x[TAP], train.x[TAP][[2, 0]])

    carried = data.carrying(("output", TAP))
    assert len(pickle.dumps(carried)) > features
    # a worker that cannot see the cache reads the carried copy
    away = pickle.loads(pickle.dumps(carried))
    object.__setattr__(away, "train", LazySplit(
        "train", Path("/nonexistent"), data.train.fingerprints, data.train.sha256,
        data.train.y))
    np.testing.assert_array_equal(away.splits(reading)[0].x[TAP], train.x[TAP])
    with pytest.raises(FileNotFoundError, match="cannot see the feature cache"):
        TrainingData(away.classes, away.train, away.validation, away.shapes).splits(reading)


def test_feature_rows_read_each_source_once_and_leave_the_input_alone():
    rng = np.random.default_rng(0)
    sources = {"output": rng.normal(size=(20, 2, 2, 8)).astype(np.float32),
               TAP: rng.normal(size=(20, 16)).astype(np.float32)}
    kept = {k: v.copy() for k, v in sources.items()}
    reads = []

    def read(source, images):
        reads.append(source)
        return sources[source][images]

    shapes = {k: v.shape[1:] for k, v in sources.items()}
    rows = feature_rows(read, shapes, ["gap", TAP, "flatten"], "power", 20)
    assert reads == ["output", TAP, "output"] and rows.shape == (20, 8 + 16 + 32)
    assert all(np.array_equal(sources[k], kept[k]) for k in sources)
    # each part on its own: signed square root, then unit length
    gap = sources["output"].mean(axis=(1, 2))
    expected = np.sign(gap) * np.sqrt(np.abs(gap))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(rows[:, :8], expected, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(rows[:, 8:24], axis=1), 1, rtol=1e-5)
    zero = np.zeros((2, 3), np.float32)
    assert np.array_equal(normalize_in_place(zero, "l2"), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="unknown normalize"):
        normalize_in_place(zero, "zscore")


def test_prepared_rows_pass_through_only_a_transform_of_the_same_setting():
    rows = PreparedRows(np.ones((3, 4), np.float32), ("gap",), "l2")
    assert FeatureRows("gap", "l2").fit(rows).transform(rows) is rows.rows
    assert FeatureRows("gap", "l2").fit(rows).n_features_in_ == 4
    with pytest.raises(ValueError, match="prepared from gap"):
        FeatureRows("gap", "power").transform(rows)
    assert len(rows[1:]) == 2


# -- scoring ----------------------------------------------------------------------------------

class _NoBar:
    def update(self):
        pass


@pytest.mark.parametrize("kind", ["logistic_regression", "sgd", "knn", "random_forest",
                                  "gradient_boosting", "mlp", "linear_svm"])
def test_predicted_classes_are_the_estimators_own(kind):
    # raw, large features: SGD's one-vs-rest probabilities saturate at 1 for several classes,
    # where the most probable class is not what it predicts
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 120)
    x = {"output": (rng.normal(0, 50, (120, 1, 1, 16)) + 20 * y[:, None, None, None])
         .astype(np.float32)}
    [trial] = _trials({"h": {"kind": kind, "features": "flatten"}})
    split = LabelledSplit("train", x, y, ())
    head = trial.fit(split, split, 4)
    predicted, _ = head.predict_split(split)
    np.testing.assert_array_equal(predicted, head.model.predict(x["output"]))


def test_predictions_come_from_one_pass_of_the_probabilities():
    kind = head_kind("knn")
    calls = []

    class Model:
        def predict(self, x):
            calls.append("predict")
            return np.zeros(len(x), np.int64)

    proba = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kind, "predict_proba", lambda model, x, n: proba)
        split = LabelledSplit("validation", {"output": np.zeros((3, 1))}, np.zeros(3), ())
        predicted, got = FittedHead(kind, Model(), 2).predict_split(split)
        assert predicted.tolist() == [1, 0, 1] and np.array_equal(got, proba) and calls == []
        patch.setattr(kind, "predict_proba", lambda model, x, n: None)
        predicted, got = FittedHead(kind, Model(), 2).predict_split(split)
        assert got is None and calls == ["predict"]


def test_training_accuracy_is_measured_on_a_seeded_sample(monkeypatch):
    x = {"output": np.arange(40, dtype=np.float32).reshape(10, 1, 1, 4)}
    split = LabelledSplit("train", x, np.arange(10), tuple(f"{i}" for i in range(10)))
    sample = split.sample(4, seed=3)
    assert len(sample) == 4 and list(sample.y) == sorted(sample.y)
    assert sample.sha256 == tuple(str(v) for v in sample.y)
    np.testing.assert_array_equal(sample.x["output"][:, 0, 0, 0], sample.y * 4)
    assert split.sample(4, seed=3).sha256 == sample.sha256 and split.sample(10) is split
    lazy = LazySplit("train", Path("."), {}, split.sha256, split.y)
    assert lazy.sample(4, seed=3).sha256 == sample.sha256

    seen = []
    original = FittedHead.predict_split

    def spy(self, part, chunk_rows=None):
        seen.append(len(part))
        return original(self, part, chunk_rows)

    monkeypatch.setattr(FittedHead, "predict_split", spy)
    monkeypatch.setattr(sweep, "TRAIN_ACCURACY_ROWS", 5)
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    x = {"output": (rng.normal(size=(40, 1, 1, 4)) + y[:, None, None, None]).astype(np.float32)}
    keys = tuple(f"{i:064x}" for i in range(40))
    data = TrainingData(("a", "b"), LazySplit("train", Path("."), {}, keys, y),
                        LazySplit("validation", Path("."), {}, keys, y), {"output": (1, 1, 4)},
                        carried={"train": LabelledSplit("train", x, y, keys),
                                 "validation": LabelledSplit("validation", x, y, keys)})
    [trial] = _trials({"lr": {"kind": "logistic_regression", "features": "gap"}})
    result, kept = sweep.fit_and_score(trial, data)
    assert seen == [40, 5]  # validation whole, training on a sample
    assert result.status == "ok" and 0 <= result.train_accuracy <= 1
    assert kept.validation.images == 40 and kept.validation.classes == ["a", "b"]


# -- kNN at scale -----------------------------------------------------------------------------

def test_a_head_refuses_more_training_rows_than_its_limit(cached_project, monkeypatch):
    heads = {"knn": {"kind": "knn", "features": "gmp", "max_train_rows": 20},
             "lr": {"kind": "logistic_regression", "features": "gap"}}
    project = cached_project(heads)  # 12 training rows per class, 3 classes
    made = _spy(monkeypatch, "_labelled", lambda args, _: args[1].parts)
    run, _ = run_named(load_config(project / "stages.yaml"), "heads")
    assert made == [("gap",), ("gap",)]  # the refused trial read nothing
    with open(run.path / "leaderboard.csv", encoding="utf-8") as fh:
        rows = {r["head"]: r for r in csv.DictReader(fh)}
    assert rows["lr"]["status"] == "ok" and rows["knn"]["status"] == "failed"
    assert "36 training rows, more than the 20 a knn head fits on " \
           "(stages.heads.models.knn.max_train_rows)" in rows["knn"]["error"]

    # the kind's own limit, with its reason
    monkeypatch.setattr(head_kind("knn"), "max_train_rows", 10)
    [trial] = _trials({"knn": {"kind": "knn", "features": "gap"}})
    split = LabelledSplit("train", {"output": np.zeros((11, 1, 1, 2), np.float32)},
                          np.zeros(11, np.int64), ())
    with pytest.raises(ValueError, match="11 training rows, more than the 10 .* compares "
                                         "every image it scores with every training row"):
        trial.fit(split, split, 2)


# -- saving -----------------------------------------------------------------------------------

def test_saving_a_head_does_not_import_torch_or_dask():
    pytest.importorskip("skops")
    code = ("import sys\n"
            "from pipeline.heads._sklearn import _skops_io\n"
            "assert _skops_io() is sys.modules['skops.io']\n"
            "print(sorted({'torch', 'dask'} & set(sys.modules)))\n"
            "import dask\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip() == "[]"


# -- the dense head beyond the memory budget ------------------------------------------------------

def test_a_dense_head_beyond_the_memory_budget_streams_from_the_cache(cached_project,
                                                                       monkeypatch):
    dense = {"kind": "dense", "features": "gap",
             "params": {"epochs": 4, "units": 16, "learning_rate": 0.01, "batch_size": 16}}
    project = cached_project({"dense": dense},
                             per_split={"train": 60, "validation": 20, "test": 20})
    whole = _spy(monkeypatch, "_labelled", lambda args, _: args[0].name)
    opened = []
    store = LazySplit.store
    monkeypatch.setattr(LazySplit, "store",
                        lambda self, source: opened.append(self.name) or store(self, source))
    monkeypatch.setattr(TrainingData, "stream_rows", lambda self, reading: 16)
    # 3 classes x 80 rows x 2,048 numbers x 4 bytes: 2 MB of training and validation features
    config = load_config(project / "stages.yaml", ["stages.heads.memory_budget_mb=1"])
    run, _ = run_named(config, "heads")
    assert whole == []
    # the training rows' store is opened a few times (statistics, batches, scores), not for
    # each of the 4 epochs' 4 chunks (each store opens its own connection to the index)
    assert opened.count("train") <= 4, opened
    history = json.loads((run.path / "heads" / "dense" / "history.json").read_text())
    assert len(history["loss"]) == 4 and len(history["val_accuracy"]) == 4
    scores = json.loads((run.path / "heads" / "dense" / "evaluation.json").read_text())
    assert scores["validation"]["images"] == 60 and scores["validation"]["accuracy"] > 0.8
    assert scores["test"]["images"] == 60

    # the same head within the budget loads the splits whole
    in_memory, _ = run_named(load_config(project / "stages.yaml"), "heads")
    assert whole == ["train", "validation"]


class _RowsInMemory:
    """What :class:`~cache.StoreRows` offers a split reader, from an array."""

    def __init__(self, x: np.ndarray):
        self.x = x

    def read(self, positions):
        return self.x[positions]

    def storage_order(self):
        return np.arange(len(self.x))


def _fake_split(name: str, y: np.ndarray, chunk_rows: int) -> LazySplit:
    """A lazy split whose rows come from memory: x is each row's own index."""
    x = np.arange(len(y), dtype=np.float32).reshape(-1, 1, 1, 1)
    split = LazySplit(name, Path("."), {"output": "f"}, tuple(map(str, range(len(y)))), y,
                      chunk_rows=chunk_rows)
    object.__setattr__(split, "reader", lambda: SplitReader(split, {"output": _RowsInMemory(x)}))
    return split


def test_shuffled_chunks_mix_the_classes_of_a_split_listed_class_by_class():
    y = np.repeat(np.arange(10), 300)          # as a view lists them: class folder by folder
    reader = _fake_split("train", y, chunk_rows=256).reader()
    in_order = reader.chunk_positions()
    assert max(len(np.unique(y[chunk])) for chunk in in_order) == 2
    epochs = [reader.chunk_positions(rng=np.random.default_rng(0)),
              reader.chunk_positions(rng=np.random.default_rng(1))]
    for chunks in epochs:
        assert [len(chunk) for chunk in chunks] == [len(chunk) for chunk in in_order]
        assert sorted(np.concatenate(chunks).tolist()) == list(range(3000))  # each row once
        assert all(len(np.unique(y[chunk])) == 10 for chunk in chunks[:-1])
        assert all(np.bincount(y[chunk], minlength=10).max() < 0.25 * len(chunk)
                   for chunk in chunks[:-1])
    assert not np.array_equal(np.concatenate(epochs[0]), np.concatenate(epochs[1]))
    x, labels = reader.read(epochs[0][0])
    np.testing.assert_array_equal(x["output"].reshape(-1), epochs[0][0])
    np.testing.assert_array_equal(labels, y[epochs[0][0]])


def test_keras_batches_cover_every_row_once_per_epoch_in_a_new_order():

    from pipeline.heads.dense import keras_batches

    split = _fake_split("train", np.arange(10), chunk_rows=4)
    batches = keras_batches(_flattened(), split, 3, n_classes=10, seed=0)
    assert len(batches) == 5  # chunks of 4, 4 and 2 rows: 2 + 2 + 1 batches
    epochs = []
    for _ in range(2):
        labels = [batches[i][1] for i in range(len(batches))]
        assert batches[0][1].tolist() == labels[0].tolist()  # asked again: the same batch
        epochs.append(np.concatenate(labels).tolist())
        batches.on_epoch_end()
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(10))
    assert epochs[0] != epochs[1]
    in_order = keras_batches(_flattened(), split, 3, n_classes=10)
    assert np.concatenate([in_order[i][1] for i in range(5)]).tolist() == list(range(10))


def _flattened(statistics=None):
    """The front of a dense head on the (1, 1, 1) output of :func:`_fake_split`."""
    from pipeline.heads.dense import FrontRows

    return FrontRows("flatten", "none", {"output": (1, 1, 1)}, statistics, 1e-7)


def test_the_tf_data_input_takes_whole_chunks_of_rows_and_cuts_exact_batches():
    from pipeline.heads.dense import fit_input, keras_batches

    # standardised with mean -1, variance 4: each row is its label plus one, halved
    front = _flattened((np.array([-1.0], np.float32), np.array([4.0], np.float32)))
    split = _fake_split("train", np.arange(10), chunk_rows=4)
    batches = keras_batches(front, split, 3, n_classes=10, seed=0)
    dataset = fit_input(batches)
    assert int(dataset.cardinality()) == 4  # 10 rows in batches of 3, across chunks of 4
    epochs = []
    for _ in range(2):
        taken = [(x.numpy(), y.numpy()) for x, y in dataset]
        assert [len(y) for _, y in taken] == [3, 3, 3, 1]
        for x, y in taken:
            np.testing.assert_allclose(x.reshape(-1), (y + 1) / 2)
        epochs.append(np.concatenate([y for _, y in taken]).tolist())
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(10))
    assert epochs[0] != epochs[1]  # a new order every epoch
    batches.release()
    assert batches.front is None and batches.load is None


def test_batches_of_a_split_in_memory_shuffle_it_whole_every_epoch():
    from pipeline.heads.dense import keras_batches

    y = np.arange(12)
    split = LabelledSplit("train", y.astype(np.float32).reshape(-1, 1, 1, 1), y, ())
    batches = keras_batches(_flattened(), split, 5, n_classes=12, seed=0)
    assert len(batches) == 3  # 5 + 5 + 2 rows
    epochs = []
    for _ in range(2):
        x_and_y = [batches[i] for i in range(len(batches))]
        for x, labels in x_and_y:  # each row with its own label
            assert x.reshape(-1).tolist() == labels.tolist()
        epochs.append(np.concatenate([labels for _, labels in x_and_y]).tolist())
        batches.on_epoch_end()
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(12))
    assert epochs[0] != epochs[1] and epochs[0] != list(range(12))
    in_order = keras_batches(_flattened(), split, 5, n_classes=12)
    assert np.concatenate([in_order[i][1] for i in range(3)]).tolist() == list(range(12))


@pytest.mark.parametrize("through", ["tf.data", "PyDataset"])
def test_a_streamed_fit_scores_the_whole_validation_split_every_epoch(through):
    import keras

    from pipeline.heads.dense import fit_input, keras_batches

    # a model that cannot learn (learning rate 0) and answers class 0: its validation accuracy
    # is the share of class 0, every epoch, if and only if every epoch sees every row once
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((1,), name="rows"),
        keras.layers.Dense(3, activation="softmax", kernel_initializer="zeros",
                           bias_initializer=keras.initializers.Constant([1.0, 0.0, 0.0]))])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    train = _fake_split("train", rng.integers(0, 3, 20), chunk_rows=4)
    validation = _fake_split("validation", rng.integers(0, 3, 23), chunk_rows=4)
    feeds = [keras_batches(_flattened(), train, 3, 3, seed=0),
             keras_batches(_flattened(), validation, 2, 3)]
    if through == "tf.data":
        feeds = [fit_input(feed) for feed in feeds]
    history = model.fit(feeds[0], validation_data=feeds[1], epochs=4, shuffle=False, verbose=0)
    expected = float(np.mean(validation.y == 0))
    np.testing.assert_allclose(history.history["val_accuracy"], [expected] * 4, rtol=1e-6)


# -- trials that load a runtime, fitted apart ------------------------------------------------

DENSE = {"kind": "dense", "features": "gap",
         "params": {"epochs": 3, "units": 16, "learning_rate": 0.01, "batch_size": 16}}


def test_runtimes_go_apart_beside_large_rows_held_here_and_stream_there(monkeypatch):
    both = _trials({"dense": DENSE, "gmp": HEADS["gmp"]})
    # the gmp rows held here are 205 MB, whatever the budget
    for budget in (256 * 2**20, 2**33, None):
        assert sweep.runs_runtimes_apart(both, _named_rows(100_000).within(budget))
    # 4 MB of rows held here: not worth a child
    assert not sweep.runs_runtimes_apart(both, _named_rows(2_000))
    # nothing else in the sweep to keep the runtime away from, or no runtime to keep away
    for alone in ({"dense": DENSE}, {"gmp": HEADS["gmp"]}):
        assert not sweep.runs_runtimes_apart(_trials(alone), _named_rows(100_000))
    # an interpreter that cannot start another (embedded, frozen)
    monkeypatch.setattr(sys, "executable", "")
    assert not sweep.runs_runtimes_apart(both, _named_rows(100_000))


def test_the_child_streams_every_raw_reading_in_chunks_of_its_own_budget():
    dense, gmp = (trial.reading for trial in _trials({"dense": DENSE, "gmp": HEADS["gmp"]}))
    data = _named_rows(10).within(2**30)
    assert not data.streams(dense)
    child = replace(data, stream_all=True, memory_budget=sweep.APART_MEMORY_BUDGET)
    assert child.streams(dense) and not child.streams(gmp)  # rows made from parts: held
    # a sixteenth of 256 MB, in rows of 4 x 4 x 512 float32
    assert child.stream_rows(dense) == 16 * 2**20 // (4 * 4 * 512 * 4)


def test_a_trial_fitted_apart_comes_back_packed_and_predicts_as_it_scored(cached_project,
                                                                         tmp_path):
    project = cached_project({"dense": DENSE, "gmp": HEADS["gmp"]},
                             per_split={"train": 30, "validation": 12, "test": 6})
    ctx = RunContext(load_config(project / "stages.yaml"))
    data = _training_data(ctx.stores, ctx.require_view(("output",)), augmented=False)
    trials = _trials({"dense": DENSE, "gmp": HEADS["gmp"]})
    outcome = sweep._run_in_process(trials, data, "val_accuracy", _NoBar(),
                                    runtimes_apart=True)
    assert [(r.head, r.status) for r in outcome.results] == [("dense", "ok"), ("gmp", "ok")]
    dense, gmp = outcome.best["dense"].model, outcome.best["gmp"].model
    assert dense.packed and not gmp.packed
    # pickled again (to a dask worker, say), it travels as it came, still packed
    assert pickle.loads(pickle.dumps(dense)).packed
    # saved packed: the very file the kind writes, which loads and predicts
    (tmp_path / "packed").mkdir()
    model_file = dense.save(tmp_path / "packed")
    assert dense.packed and model_file.name == "model.keras"
    loaded = dense.kind.load(model_file)
    validation = data.splits(trials[0].reading)[1]
    predicted, _ = dense.predict_split(validation)  # unpacks it here
    assert not dense.packed
    assert np.mean(predicted == validation.y) == pytest.approx(outcome.results[0].val_accuracy)
    np.testing.assert_allclose(dense.kind.predict_proba(loaded, validation.x, 3),
                               dense.predict_proba(validation.x), rtol=1e-5, atol=1e-6)


def test_a_child_that_dies_fails_its_trials_and_the_sweep_goes_on(cached_project,
                                                                  monkeypatch):
    project = cached_project({"dense": DENSE, "gmp": HEADS["gmp"]})
    ctx = RunContext(load_config(project / "stages.yaml"))
    data = _training_data(ctx.stores, ctx.require_view(("output",)), augmented=False)
    monkeypatch.setattr(sweep, "CHILD_COMMAND", (sys.executable, "-c", (
        "import os, sys; sys.stderr.write('Killed while fitting\\n'); os._exit(9)")))
    trials = _trials({"dense": {**DENSE, "sweep": {"params": {"units": [8, 16]}}},
                      "gmp": HEADS["gmp"]})
    outcome = sweep._run_in_process(trials, data, "val_accuracy", _NoBar(),
                                    runtimes_apart=True)
    assert [(r.head, r.status) for r in outcome.results] == [
        ("dense", "failed"), ("dense", "failed"), ("gmp", "ok")]
    assert outcome.results[0].error == (
        "ChildProcessError: the process fitting this trial apart ended before its result "
        "(exit status 9: Killed while fitting)")
    assert set(outcome.best) == {"gmp"}


def test_a_sweep_with_its_dense_trials_apart_never_loads_keras_here(cached_project):
    # a dense head that cannot win (one epoch at a learning rate that barely moves it): the
    # stage saves it from the bytes it came back as, and tests the logistic regression; nor
    # does scikit-learn bring pandas along (DATAFRAME_LIBRARIES)
    weak = {**DENSE, "params": {**DENSE["params"], "epochs": 1, "learning_rate": 1e-7}}
    project = cached_project({"dense": weak, "gmp": HEADS["gmp"]}, scheduler="auto",
                             per_split={"train": 60, "validation": 20, "test": 6})
    code = ("import sys\n"
            "from pipeline.heads import sweep\n"
            "sweep.RUNTIME_APART_BYTES = 0\n"
            "from pipeline.cli import main\n"
            f"code = main(['run', 'heads', '-c', {str(project / 'stages.yaml')!r}, "
            "'--no-progress'])\n"
            "print(sorted({'keras', 'tensorflow', 'pandas'} & set(sys.modules)))\n"
            "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "best: gmp" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"
    from pipeline.heads.saving import load_head
    run = max((project / "runs").iterdir())
    head, metadata = load_head(run / "heads" / "dense")
    assert metadata["kind"] == "dense" and head.model.name == "dense_head_dense"


def test_the_child_finds_this_package_and_keeps_two_malloc_arenas(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # not where the package is: PYTHONPATH must find it
    # a stand-in child that says what it was given, then ends without a result
    monkeypatch.setattr(sweep, "CHILD_COMMAND", (sys.executable, "-c", (
        "import os, sys, pipeline.heads.child\n"
        "sys.stderr.write(os.environ['MALLOC_ARENA_MAX'] + ' ' +\n"
        "                 str(pipeline.heads.child.__file__ == sys.argv[1]))\n"),
        sweep.__file__.replace("sweep.py", "child.py")))
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    trials = _trials({"dense": DENSE})
    [(result, model)] = sweep.fit_and_score_apart(trials, _named_rows(10))
    assert model is None and result.error.endswith("(exit status 0: 2 True)")


def test_a_child_that_ends_before_reading_its_rows_fails_its_trials(monkeypatch):
    # tens of MB of keys to send: more than a pipe holds, so the write breaks
    monkeypatch.setattr(sweep, "CHILD_COMMAND", (sys.executable, "-c", "raise SystemExit(3)"))
    trials = _trials({"dense": {**DENSE, "sweep": {"params": {"units": [8, 16]}}}})
    fitted = list(sweep.fit_and_score_apart(trials, _named_rows(300_000)))
    assert [(result.status, model) for result, model in fitted] == [("failed", None)] * 2
    assert "(exit status 3: it wrote nothing on standard error)" in fitted[0][0].error


def test_a_child_is_not_left_fitting_when_its_caller_stops(monkeypatch, tmp_path):
    # a child that sends one result, says who it is, and would go on for a minute
    pid_file = tmp_path / "pid"
    monkeypatch.setattr(sweep, "CHILD_COMMAND", (sys.executable, "-c", (
        "import os, pickle, sys, time\n"
        "sys.stdin.buffer.read()\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "pickle.dump(('first', None), sys.stdout.buffer); sys.stdout.flush()\n"
        "time.sleep(60)\n")))
    trials = _trials({"dense": {**DENSE, "sweep": {"params": {"units": [8, 16]}}}})
    fitted = sweep.fit_and_score_apart(trials, _named_rows(10))
    assert next(fitted) == ("first", None)
    fitted.close()  # as an exception in the sweep's loop does
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


class _PackedOnce(HeadKind):
    """A kind whose packed model fails to unpack the first time (a model file unreadable
    for a moment, a MemoryError)."""

    name = "packed_once"
    attempts = 0

    def unpack(self, packed):
        type(self).attempts += 1
        if type(self).attempts == 1:
            raise MemoryError("not now")
        return f"model of {packed}"

    check = fit = predict_proba = predict = save = load = lambda *args: None


def test_a_packed_head_shows_itself_without_unpacking_and_survives_a_failed_unpack():
    head = pickle.loads(pickle.dumps(FittedHead(_PackedOnce(), "bytes", 2)))
    assert head.packed and "bytes" not in repr(head) and head == head
    assert head.packed  # repr and == left it packed
    with pytest.raises(MemoryError):
        _ = head.model
    assert head.packed
    assert head.model == "model of bytes" and not head.packed
    head.model = "replaced"  # what travels now is the replacement, not the old bytes
    assert pickle.loads(pickle.dumps(head)).model == "model of replaced"
