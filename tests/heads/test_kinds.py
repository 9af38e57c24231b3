"""Head models on their own: every kind trains and predicts, saves and reloads, checks params."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.pipeline import Pipeline

from pipeline.config import HeadConfig, HeadsConfig, parse_config
from pipeline.config.heads import HEAD_KINDS
from pipeline.errors import ConfigError, HeadLoadError
from pipeline.heads.features import FeatureRows
from pipeline.heads.kind import FittedHead
from pipeline.heads.registry import KINDS, check_heads, head_kind
from pipeline.heads.saving import load_head, save_head
from pipeline.heads.splits import LabelledSplit
from pipeline.heads.trial import TrialSpec
from pipeline.heads.trials import Trial

# Few epochs at a high learning rate: the dense head must learn these blobs in a second.
FAST_DENSE = {"epochs": 8, "learning_rate": 0.01, "batch_size": 8, "units": 16}
# 30 training rows: scikit-learn's defaults for large data would not split a tree at all.
SMALL_DATA = {"dense": FAST_DENSE, "gradient_boosting": {"min_samples_leaf": 2},
              "knn": {"n_neighbors": 3}}


def _blobs(n_per_class: int, classes: int = 3, seed: int = 0, shape=(2, 2, 8)):
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(0, 1, (classes, *shape))
    y = np.repeat(np.arange(classes), n_per_class)
    x = (means[y] + rng.normal(0, 0.5, (len(y), *shape))).astype(np.float32)
    return x, y


def _splits(classes: int = 3):
    x, y = _blobs(10, classes, seed=1)
    xv, yv = _blobs(5, classes, seed=2)
    return LabelledSplit("train", x, y, ()), LabelledSplit("validation", xv, yv, ())


def _spec(kind: str, **head) -> TrialSpec:
    params = SMALL_DATA.get(kind, {})
    return TrialSpec("h", 0, HeadConfig(kind=kind, params={**params, **head.pop("params", {})},
                                         **head), seed=3)


def fit_head(spec: TrialSpec, train, validation, n_classes: int) -> FittedHead:
    """Fit ``spec`` as the sweep does: through its :class:`Trial` (its kind resolved once)."""
    return Trial(spec).fit(train, validation, n_classes)


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_every_kind_trains_and_predicts(kind: str):
    train, validation = _splits()
    head = fit_head(_spec(kind, scale=True), train, validation, n_classes=3)
    predicted = head.predict(validation.x)
    assert predicted.shape == (15,) and set(predicted) <= {0, 1, 2}
    assert np.mean(predicted == validation.y) >= 0.7  # separable blobs; chance is 1/3
    proba = head.predict_proba(validation.x)
    if kind == "linear_svm":
        assert proba is None
    else:
        assert proba.shape == (15, 3)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_dense_head_is_the_source_architecture_with_sigmoid_for_two_classes():
    train, validation = _splits(classes=2)
    head = fit_head(_spec("dense", params={"units": 256}), train, validation, n_classes=2)
    layers = [(type(layer).__name__, getattr(layer, "units", None)) for layer in
              head.model.layers if type(layer).__name__ != "InputLayer"]
    assert layers == [("Flatten", None), ("Normalization", None), ("Dense", 256),
                      ("Dropout", None), ("Dense", 1)]
    assert head.model.layers[-1].activation.__name__ == "sigmoid"
    assert head.model.get_layer("dropout").rate == 0.5
    assert head.predict_proba(validation.x).shape == (10, 2)
    assert set(head.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}


@pytest.mark.parametrize("classes", [2, 3])
def test_dense_early_stopping_stops_before_the_last_epoch_and_restores_the_best(classes: int):
    # the accuracy early stopping saw must be the returned model's
    train, validation = _splits(classes)
    head = fit_head(_spec("dense", params={"epochs": 200, "patience": 2}), train, validation,
                    classes)
    accuracies = head.history["val_accuracy"]
    assert len(accuracies) < 200
    # restore_best: the model returned scores the best epoch's validation accuracy
    assert np.mean(head.predict(validation.x) == validation.y) == pytest.approx(max(accuracies))


def test_dense_without_patience_runs_every_epoch():
    train, validation = _splits()
    head = fit_head(_spec("dense", params={"epochs": 4, "patience": None}), train, validation, 3)
    assert len(head.history["loss"]) == 4


def test_dense_training_is_reproducible_for_a_seed_and_moves_with_it():
    train, validation = _splits()

    def probabilities(seed: int) -> np.ndarray:
        spec = TrialSpec("h", 0, HeadConfig(kind="dense", params=FAST_DENSE), seed=seed)
        return fit_head(spec, train, validation, 3).predict_proba(validation.x)

    np.testing.assert_array_equal(probabilities(3), probabilities(3))
    assert not np.allclose(probabilities(3), probabilities(4))


@pytest.mark.parametrize("classes", [2, 3])
def test_dense_fed_in_batches_beyond_the_copy_limit_learns_reproducibly_and_restores_the_best(
        monkeypatch, classes: int):
    # features over KERAS_COPY_LIMIT reach Keras as batches gathered from the arrays, which
    # must train as the arrays do: learn, repeat for a seed, end with the best epoch (two
    # classes: one sigmoid unit and (N, 1) float labels, not class indices)
    from pipeline.heads import dense

    fed: list[int] = []
    batches = dense.keras_batches
    monkeypatch.setattr(dense, "KERAS_COPY_LIMIT", 0)
    monkeypatch.setattr(dense, "keras_batches",
                        lambda model, split, *args, **kw: fed.append(len(split)) or
                        batches(model, split, *args, **kw))
    train, validation = _splits(classes)
    spec = _spec("dense", params={"epochs": 60, "patience": 3})
    head = fit_head(spec, train, validation, classes)
    assert fed == [10 * classes, 5 * classes]
    accuracies = head.history["val_accuracy"]
    assert max(accuracies) >= 0.7 and len(accuracies) < 60
    assert np.mean(head.predict(validation.x) == validation.y) == pytest.approx(max(accuracies))
    np.testing.assert_array_equal(
        head.predict_proba(validation.x),
        fit_head(spec, train, validation, classes).predict_proba(validation.x))


def test_dense_fed_in_batches_lets_go_of_its_rows_after_fitting(monkeypatch):
    # TensorFlow keeps every dataset made from a Python generator for the life of the
    # process; the batches must not keep the rows with them
    import gc
    import weakref

    from pipeline.heads import dense

    monkeypatch.setattr(dense, "KERAS_COPY_LIMIT", 0)
    train, validation = _splits()
    rows = [weakref.ref(split.x) for split in (train, validation)]
    head = fit_head(_spec("dense", params={"epochs": 2}), train, validation, 3)
    del train, validation
    gc.collect()
    assert [row() for row in rows] == [None, None]
    assert len(head.history["loss"]) == 2


@pytest.mark.parametrize("optimizer", ["adam", "nadam", "sgd"])
def test_dense_trains_with_every_optimizer_and_a_short_last_batch(optimizer: str):
    # 30 rows in batches of 8: the fourth batch has 6 rows and must still train
    train, validation = _splits()
    params = {"optimizer": optimizer, "patience": None,
              "learning_rate": 0.05 if optimizer == "sgd" else 0.01}
    head = fit_head(_spec("dense", params=params), train, validation, 3)
    assert len(head.history["loss"]) == FAST_DENSE["epochs"]
    assert head.history["loss"][-1] < head.history["loss"][0]
    assert type(head.model.optimizer).__name__.lower() == optimizer


def test_dense_without_validation_rows_trains_every_epoch_and_records_no_validation():
    train, validation = _splits()
    empty = LabelledSplit("validation", validation.x[:0], validation.y[:0], ())
    head = fit_head(_spec("dense", params={"patience": 1}), train, empty, 3)
    assert set(head.history) == {"loss", "accuracy"}
    assert len(head.history["loss"]) == FAST_DENSE["epochs"]


@pytest.mark.parametrize("part, width", [("flatten", 32), ("gap", 8), ("gmp", 8)])
def test_the_parts_of_the_output(part: str, width: int):
    x, _ = _blobs(2)
    rows = FeatureRows(part).fit_transform(x)
    assert rows.shape == (6, width)
    if part == "gap":
        np.testing.assert_allclose(rows, x.mean(axis=(1, 2)), rtol=1e-6)
    if part == "gmp":
        np.testing.assert_array_equal(rows, x.max(axis=(1, 2)))


def test_scaling_and_pca_are_pipeline_steps():
    train, validation = _splits()
    head = fit_head(_spec("logistic_regression", features="gap", scale=True, pca=4),
                    train, validation, 3)
    assert isinstance(head.model, Pipeline)
    assert [name for name, _ in head.model.steps] == ["features", "scale", "pca", "model"]
    assert head.model.named_steps["pca"].n_components_ == 4


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_saved_head_reloads_and_predicts_the_same(kind: str, tmp_path):
    train, validation = _splits()
    head = fit_head(_spec(kind, scale=True), train, validation, n_classes=3)
    save_head(head, tmp_path / "h", {"classes": ["a", "b", "c"]})
    again, metadata = load_head(tmp_path / "h")
    assert metadata["classes"] == ["a", "b", "c"] and again.kind.name == kind
    np.testing.assert_array_equal(again.predict(validation.x), head.predict(validation.x))
    if kind != "linear_svm":
        np.testing.assert_allclose(again.predict_proba(validation.x),
                                   head.predict_proba(validation.x), rtol=1e-6)


@pytest.mark.parametrize("kind", ["knn", "logistic_regression"])
def test_a_head_s_large_arrays_are_streamed_into_its_file_and_put_back(kind: str, tmp_path,
                                                                        monkeypatch):
    import zipfile

    from pipeline.heads import _sklearn
    monkeypatch.setattr(_sklearn, "STREAMED_ARRAY_BYTES", 64)  # the kNN's training rows
    train, validation = _splits()
    head = fit_head(_spec(kind, scale=True), train, validation, n_classes=3)
    estimator = head.model.named_steps["model"]
    large = {name for name, value in vars(estimator).items()
             if isinstance(value, np.ndarray) and value.nbytes >= 64}
    assert large  # kNN: _fit_X; logistic regression: coef_
    save_head(head, tmp_path / "h", {"classes": ["a", "b", "c"]})
    assert large <= set(vars(estimator))   # the fitted model in memory keeps them
    with zipfile.ZipFile(tmp_path / "h" / "model.skops") as archive:
        streamed = {n for n in archive.namelist() if n.startswith("streamed-arrays/model/")}
    assert streamed == {f"streamed-arrays/model/{name}.npy" for name in large}
    again, _ = load_head(tmp_path / "h")
    for name in large:
        np.testing.assert_array_equal(getattr(again.model.named_steps["model"], name),
                                      getattr(estimator, name))
    np.testing.assert_array_equal(again.predict(validation.x), head.predict(validation.x))
    np.testing.assert_allclose(again.predict_proba(validation.x),
                               head.predict_proba(validation.x), rtol=1e-6)
    # a save that fails leaves the model in memory whole
    with monkeypatch.context() as patch:
        def failing_dump(model, file):
            raise OSError("disk full")
        patch.setattr(_sklearn._skops_io(), "dump", failing_dump)
        with pytest.raises(OSError, match="disk full"):
            save_head(head, tmp_path / "h2", {"classes": ["a", "b", "c"]})
    assert large <= set(vars(estimator))


@pytest.mark.parametrize("member, problem", [
    ("streamed-arrays/model/predict.npy", "no fitted attribute"),    # a method
    ("streamed-arrays/model/__class__.npy", "no fitted attribute"),
    ("streamed-arrays/nowhere/coef_.npy", "no fitted attribute"),    # no such step
    ("streamed-arrays/model/coef_.txt", "no fitted attribute"),
    ("streamed-arrays/model/coef_.npy", "more bytes than it does"),  # a header that lies
])
def test_a_model_file_with_a_streamed_array_this_pipeline_never_writes_is_refused(
        member: str, problem: str, tmp_path):
    import zipfile
    train, validation = _splits()
    save_head(fit_head(_spec("logistic_regression"), train, validation, 3), tmp_path / "h", {})
    with zipfile.ZipFile(tmp_path / "h" / "model.skops", "a") as archive:
        with archive.open(member, "w") as fh:
            if problem == "more bytes than it does":
                np.lib.format.write_array_header_1_0(
                    fh, {"descr": "<f8", "fortran_order": False, "shape": (10 ** 9,)})
            else:
                np.lib.format.write_array(fh, np.zeros(3))
    with pytest.raises(HeadLoadError, match=problem):
        load_head(tmp_path / "h")


class NotAllowed(FeatureRows):
    """A type no head of the pipeline contains."""


def test_a_saved_head_with_unknown_types_is_refused(tmp_path):
    train, _ = _splits()
    model = Pipeline([("features", NotAllowed("gap")),
                      ("model", fit_head(_spec("knn"), train, train, 3).model[-1])])
    save_head(FittedHead(head_kind("knn"), model, 3), tmp_path / "h", {})
    with pytest.raises(HeadLoadError, match="refusing to load types.*NotAllowed"):
        load_head(tmp_path / "h")


def test_a_damaged_head_file_is_a_clear_error(tmp_path):
    train, _ = _splits()
    save_head(fit_head(_spec("knn"), train, train, 3), tmp_path / "h", {})
    (tmp_path / "h" / "model.skops").write_bytes(b"not a zip")
    with pytest.raises(HeadLoadError, match="cannot read"):
        load_head(tmp_path / "h")


def _heads(models: dict) -> HeadsConfig:
    return parse_config({"data": {"root": "."}, "stages": {"heads": {"models": models}}}
                        ).stages.heads


@pytest.mark.parametrize("models, message", [
    ({"a": {"kind": "logistic_regression", "params": {"C_": 1}}},
     "stages.heads.models.a.params.C_: LogisticRegression has no parameter 'C_'"),
    ({"a": {"kind": "logistic_regression", "params": {"C": -1.0}}},
     "stages.heads.models.a.params: The 'C' parameter"),
    ({"a": {"kind": "knn", "sweep": {"params": {"n_neighbors": [3, 0]}}}},
     "stages.heads.models.a.sweep.params: The 'n_neighbors' parameter"),
    ({"a": {"kind": "sgd", "sweep": {"method": "random", "params": {"alphas": {
        "loguniform": [1e-4, 1e-1]}}}}}, "SGDClassifier has no parameter 'alphas'"),
    ({"a": {"kind": "dense", "sweep": {"params": {"dropout": [0.5, 1.5]}}}},
     "stages.heads.models.a.sweep.params.dropout: 1.5"),
    ({"a": {"kind": "dense", "sweep": {"params": {"unit": [4]}}}},
     "the dense head has no parameter 'unit'"),
    ({"a": {"kind": "svm_rbf"}}, None),
    ({"a": {"kind": "knn", "sweep": {"params": {"pca": [0.5, 1.5]}}}},
     "sweep.params.pca: 1.5 is not a valid pca value"),
])
def test_bad_head_parameters_are_named_before_any_work(models: dict, message):
    if message is None:  # structural errors are caught when the file is read
        with pytest.raises(ConfigError, match="stages.heads.models.a.kind"):
            _heads(models)
        return
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_heads(_heads(models))


@pytest.mark.parametrize("head, message", [
    ({"kind": "dense", "params": {"unitz": 3}}, "params.unitz: unknown parameter"),
    ({"kind": "dense", "pca": 4}, "pca applies to scikit-learn heads"),
    ({"kind": "knn", "incremental": {}}, "incremental training needs kind: sgd"),
    ({"kind": "sgd", "sweep": {"params": {"alpha": {"loguniform": [1e-4, 1]}}}},
     "a grid needs lists of values; alpha is a distribution"),
    ({"kind": "sgd", "sweep": {"method": "random", "params": {"alpha": {"loguniform": [0, 1]}}}},
     "loguniform needs low > 0"),
    ({"kind": "sgd", "sweep": {"params": {}}}, "list at least one parameter"),
    ({"kind": "sgd", "pca": 1.5}, "variance fraction"),
    ({"kind": "sgd", "incremental": {}, "sweep": {"params": {"pca": [2, 4]}}},
     "pca cannot be fitted incrementally"),
    ({"kind": "sgd", "params": {"alpha": float("nan")}}, "params.alpha: nan is not a finite"),
    ({"kind": "sgd", "sweep": {"params": {"alpha": [0.1, float("inf")]}}}, "inf is not a finite"),
    ({"kind": "sgd", "sweep": {"method": "random", "params": {"pca": {"uniform": [0.1, 0.9]}}}},
     "pca: give a list of values"),
])
def test_head_structure_errors_name_the_key(head: dict, message: str):
    with pytest.raises(ConfigError, match=f"stages.heads.models.a.*{message}"):
        _heads({"a": head})


def test_a_trained_dense_head_names_only_keras_classes():
    train, validation = _splits()
    head = fit_head(_spec("dense"), train, validation, n_classes=3)
    assert type(head.model.optimizer).__name__ == "Adam"
    assert type(head.model.optimizer).__module__.startswith("keras.")


def test_a_fitted_dense_head_pickles_and_predicts_the_same():
    import pickle

    train, validation = _splits()
    head = fit_head(_spec("dense"), train, validation, n_classes=3)
    again = pickle.loads(pickle.dumps(head))
    assert again.history == head.history
    np.testing.assert_allclose(again.predict_proba(validation.x),
                               head.predict_proba(validation.x), rtol=1e-6)


def test_the_registry_implements_every_kind_the_configuration_accepts():
    assert set(KINDS) == set(HEAD_KINDS)
    assert [kind.name for kind in KINDS.values() if kind.sits_on_base] == ["dense"]
    with pytest.raises(HeadLoadError, match="unknown head kind 'svm_rbf'"):
        head_kind("svm_rbf")


@pytest.mark.parametrize("module", ["pipeline.features", "pipeline.heads.features"])
def test_a_head_saved_by_an_earlier_release_still_loads(module: str, tmp_path, monkeypatch):
    # skops files of earlier releases name the class FeatureView, with its parts under
    # ``view``, in its old module pipeline.features or in this one
    import sys

    import pipeline.heads.features as features
    train, validation = _splits()
    head = fit_head(_spec("logistic_regression", features="gap"), train, validation, 3)
    head.model[0].__class__ = type("FeatureView", (FeatureRows,), {
        "__module__": module, "__getstate__": lambda self: {
            ("view" if key == "parts" else key): value for key, value in self.__dict__.items()}})
    monkeypatch.setitem(sys.modules, "pipeline.features", features)
    save_head(head, tmp_path / "old", {})
    monkeypatch.undo()
    assert "pipeline.features" not in sys.modules
    import skops.io
    assert f"{module}.FeatureView" in skops.io.get_untrusted_types(
        file=tmp_path / "old" / "model.skops")
    again, _ = load_head(tmp_path / "old")
    assert again.model[0].parts == "gap" and not hasattr(again.model[0], "view")
    np.testing.assert_array_equal(again.predict(validation.x), head.predict(validation.x))
    assert "pipeline.features" not in sys.modules  # the alias lasts only while loading


TAP_PARTS = ["block4_conv3.gmp", "block3_conv3.gap", "gap"]  # two taps, an output part


def _tap_splits():
    """Splits whose features are {source: array}: the output tensor and two tap vectors, each
    class-separable on its own, at very different scales (what normalisation is for)."""
    def features(seed):
        out, y = _blobs(10 if seed == 1 else 5, seed=seed)
        tap3, _ = _blobs(10 if seed == 1 else 5, seed=seed + 10, shape=(6,))
        tap4, _ = _blobs(10 if seed == 1 else 5, seed=seed + 20, shape=(10,))
        return {"output": out, "block3_conv3.gap": tap3 * 1000.0,
                "block4_conv3.gmp": tap4 * 0.001}, y
    (x, y), (xv, yv) = features(1), features(2)
    return LabelledSplit("train", x, y, ()), LabelledSplit("validation", xv, yv, ())


@pytest.mark.parametrize(("features", "normalize", "scale"), [
    (["gap", "block3_conv3.gap", "block4_conv3.gmp"], "power", True),
    (["flatten", "block4_conv3.gmp"], "l2", True),
    ("gmp", "none", False),
])
def test_the_rows_the_dense_core_trains_on_are_those_the_saved_models_front_makes(
        features, normalize: str, scale: bool):
    import keras

    from pipeline.heads.dense import (
        FrontRows,
        dense_model,
        model_inputs,
        set_standardization,
        standardization_statistics,
    )

    train, _ = _tap_splits()
    shapes = {source: array.shape[1:] for source, array in train.x.items()}
    params = HeadConfig(kind="dense").dense_params({})
    model = dense_model(params, features, normalize, shapes, 3, seed=0, scale=scale)
    statistics = standardization_statistics(features, normalize, train.x) if scale else None
    if statistics is not None:
        set_standardization(model, *statistics)
    front = FrontRows(features, normalize, shapes, statistics, keras.config.epsilon())
    inside = keras.Model(model.input, model.get_layer("hidden").input)
    made = front(train.x)
    assert made.dtype == np.float32 and made.shape[1] == front.width
    np.testing.assert_allclose(made, inside.predict(model_inputs(inside, train.x), verbose=0),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("normalize", ["l2", "power"])
def test_parts_are_normalised_one_by_one_then_concatenated_in_order(normalize: str):
    train, _ = _tap_splits()
    rows = FeatureRows(TAP_PARTS, normalize).fit_transform(train.x)
    assert rows.shape == (30, 10 + 6 + 8)
    pieces = (rows[:, :10], rows[:, 10:16], rows[:, 16:])
    sources = (train.x["block4_conv3.gmp"], train.x["block3_conv3.gap"],
               train.x["output"].mean(axis=(1, 2)))
    for piece, source in zip(pieces, sources):
        np.testing.assert_allclose(np.linalg.norm(piece, axis=1), 1.0, rtol=1e-5)
        expected = np.sign(source) * np.sqrt(np.abs(source)) if normalize == "power" else source
        expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
        np.testing.assert_allclose(piece, expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="hold no block5_conv1.gap"):
        FeatureRows(["gap", "block5_conv1.gap"]).transform(train.x)


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_every_kind_on_concatenated_normalised_taps_trains_saves_reloads_and_predicts(
        kind: str, tmp_path):
    train, validation = _tap_splits()
    head = fit_head(_spec(kind, features=TAP_PARTS, normalize="power"), train, validation, 3)
    predicted = head.predict(validation.x)
    assert np.mean(predicted == validation.y) >= 0.6  # chance is 1/3
    save_head(head, tmp_path / "h", {"classes": ["a", "b", "c"]})
    again, _ = load_head(tmp_path / "h")
    np.testing.assert_array_equal(again.predict(validation.x), predicted)
    if kind != "linear_svm":
        np.testing.assert_allclose(again.predict_proba(validation.x),
                                   head.predict_proba(validation.x), rtol=1e-5, atol=1e-7)
    # the head reads its sources by name, whatever else the features hold or their order
    extra = {"block5_conv1.gap": np.zeros((15, 3), np.float32),
             **dict(reversed(list(validation.x.items())))}
    np.testing.assert_array_equal(again.predict(extra), predicted)


def test_the_dense_head_on_taps_normalises_as_feature_rows_does():
    from pipeline.heads.dense import model_inputs

    train, validation = _tap_splits()
    head = fit_head(_spec("dense", features=TAP_PARTS, normalize="power"), train, validation, 3)
    model = head.model
    # the layers before the first Dense compute the FeatureRows's rows
    concatenated = next(layer for layer in model.layers if type(layer).__name__ == "Concatenate")
    from pipeline.nn.runtime import keras
    rows = keras.Model(model.inputs, concatenated.output)(model_inputs(model, validation.x))
    np.testing.assert_allclose(np.asarray(rows),
                               FeatureRows(TAP_PARTS, "power").transform(validation.x),
                               rtol=1e-4, atol=1e-6)


def _relu_like_splits(classes: int = 3):
    """Features shaped like a VGG16 block's pooled output: non-negative, mostly zero, hundreds
    where a unit fires (the raw values the source recipe trained on); each class lights its own
    units a little more, under noise a linear model still separates."""
    rng = np.random.default_rng(5)
    preferred = rng.random((classes, 2, 2, 32)) < 0.3

    def split(name: str, per_class: int):
        y = np.repeat(np.arange(classes), per_class)
        active = rng.random((len(y), 2, 2, 32)) < 0.2
        x = np.where(active | preferred[y], rng.gamma(2.0, 100.0, (len(y), 2, 2, 32)), 0.0)
        return LabelledSplit(name, (x * (1 + preferred[y])).astype(np.float32), y, ())

    return split("train", 20), split("validation", 10)


@pytest.mark.parametrize("features, normalize", [
    ("flatten", "none"), ("gap", "none"), ("gmp", "none"), ("flatten", "power"),
    (TAP_PARTS, "none"), (TAP_PARTS, "power")])
def test_the_dense_head_learns_every_part_and_normalisation_with_its_defaults(features,
                                                                             normalize):
    # default optimizer, learning rate, batch size, epochs and scale; every epoch runs
    splits = _tap_splits() if features is TAP_PARTS else _relu_like_splits()
    train, validation = splits
    head = fit_head(TrialSpec("h", 0, HeadConfig(kind="dense", features=features,
                                                  normalize=normalize,
                                                  params={"patience": None}),
                              seed=0), train, validation, 3)
    assert np.mean(head.predict(validation.x) == validation.y) >= 0.85  # chance is 1/3


def test_dense_standardisation_statistics_come_from_the_training_rows_only():
    from pipeline.heads.dense import STANDARDIZE_LAYER

    train, validation = _tap_splits()
    # validation rows far from the training rows: if they entered the statistics, the mean
    # would move by hundreds
    shifted = LabelledSplit("validation", {k: v + 500.0 for k, v in validation.x.items()},
                            validation.y, ())
    head = fit_head(_spec("dense", features=TAP_PARTS, params={"epochs": 1}), train, shifted, 3)
    layer = head.model.get_layer(STANDARDIZE_LAYER)
    rows = FeatureRows(TAP_PARTS).transform(train.x).astype(np.float64)
    np.testing.assert_allclose(np.ravel(layer.adapt_mean), rows.mean(axis=0), rtol=1e-4,
                               atol=1e-5)
    # one variance per part (widths 10, 6 and 8: the two taps, then gap), the mean of its
    # features' variances
    pieces = np.split(rows.var(axis=0), [10, 16])
    expected = np.concatenate([np.full(len(piece), piece.mean()) for piece in pieces])
    np.testing.assert_allclose(np.ravel(layer.adapt_variance), expected, rtol=1e-3)
    assert len(set(np.round(np.ravel(layer.adapt_variance), 3))) == 3


def test_standardisation_centres_each_feature_and_scales_each_part_as_a_whole():
    from pipeline.heads.dense import standardization_statistics

    train, _ = _tap_splits()
    mean, variance = standardization_statistics(TAP_PARTS, "none", train.x)
    rows = FeatureRows(TAP_PARTS).transform(train.x).astype(np.float64)
    np.testing.assert_allclose(mean, rows.mean(axis=0), rtol=1e-5, atol=1e-6)
    for piece, part_rows in zip(np.split(variance, [10, 16]), np.split(rows, [10, 16], axis=1)):
        # one number per part: the mean of its features' variances (the x1000 and x0.001 taps
        # end near 1e6 and 1e-6, so each part comes to unit scale)
        np.testing.assert_allclose(piece, part_rows.var(axis=0).mean(), rtol=1e-4)
    # chunked sums give what one pass over the rows gives
    many = {k: np.concatenate([v] * 300) for k, v in train.x.items()}  # 9,000 rows
    again = standardization_statistics(TAP_PARTS, "none", many)
    np.testing.assert_allclose(again[0], mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(again[1], variance, rtol=1e-4)


def test_a_part_constant_on_the_training_rows_is_not_divided_by_zero():
    from pipeline.heads.dense import STANDARDIZE_LAYER

    train, validation = _tap_splits()
    # the block3 tap never fires on a training image, and fires on every new one
    x = {**train.x, "block3_conv3.gap": np.zeros_like(train.x["block3_conv3.gap"])}
    xv = {**validation.x, "block3_conv3.gap": np.ones_like(validation.x["block3_conv3.gap"])}
    head = fit_head(_spec("dense", features=TAP_PARTS), LabelledSplit("train", x, train.y, ()),
                    LabelledSplit("validation", xv, validation.y, ()), 3)
    variance = np.ravel(head.model.get_layer(STANDARDIZE_LAYER).adapt_variance)
    np.testing.assert_array_equal(variance[10:16], 1.0)  # left unscaled
    assert (variance[:10] != 1.0).all() and (variance[16:] != 1.0).all()
    proba = head.predict_proba(xv)
    assert np.isfinite(proba).all()
    assert np.mean(proba.argmax(axis=1) == validation.y) >= 0.8  # the other parts still tell


def test_the_dense_head_hears_a_small_part_beside_a_loud_one():
    # the class is only in the x0.001 tap; the x1000 tap is noise: standardised per part, the
    # small one weighs as much as the loud one
    train, validation = _tap_splits()
    rng = np.random.default_rng(8)

    def noisy(split):
        loud = rng.normal(0, 1000.0, split.x["block3_conv3.gap"].shape).astype(np.float32)
        return LabelledSplit(split.name, {"block3_conv3.gap": loud,
                                          "block4_conv3.gmp": split.x["block4_conv3.gmp"]},
                             split.y, ())

    parts = ["block3_conv3.gap", "block4_conv3.gmp"]
    head = fit_head(_spec("dense", features=parts, params={"patience": None}), noisy(train),
                    noisy(validation), 3)
    assert np.mean(head.predict(noisy(validation).x) == validation.y) >= 0.85


def test_the_source_recipe_stays_reachable_by_configuration():
    train, validation = _splits(classes=2)
    recipe = {"optimizer": "rmsprop", "learning_rate": 2e-5, "batch_size": 20, "epochs": 2}
    head = fit_head(_spec("dense", scale=False, params=recipe), train, validation, 2)
    layers = [type(layer).__name__ for layer in head.model.layers]
    assert "Normalization" not in layers
    assert type(head.model.optimizer).__name__ == "RMSprop"
    assert float(head.model.optimizer.learning_rate) == pytest.approx(2e-5)
    # 20 training rows in batches of 20, 2 epochs: two steps
    assert len(head.history["loss"]) == 2 and int(head.model.optimizer.iterations) == 2
