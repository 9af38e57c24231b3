"""Heads: what each ``kind`` builds, how one is fitted, and how it predicts.

A scikit-learn head is a Pipeline ``FeatureView -> [StandardScaler] -> [PCA] -> estimator``
that takes (N, h, w, c) features directly. The dense head is the source material's Keras
model (Flatten, Dense 256 relu, Dropout 0.5, Dense sigmoid/softmax) with the feature view as
its first layer, so it too takes (N, h, w, c) and can later sit on top of the conv base.

Keras is imported only when a dense head is built: a sweep of scikit-learn heads never pays
for TensorFlow.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.decomposition import PCA
from sklearn.ensemble import (
    ExtraTreesClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from .config import DenseParams, HeadConfig, HeadsConfig
from .config.heads import PIPELINE_KEYS
from .errors import ConfigError
from .features import FeatureView, LabelledSplit

# kind -> (estimator class, defaults that differ from scikit-learn's). The iteration limits are
# raised because 8,192 unscaled features converge slowly; the defaults would stop with a
# ConvergenceWarning on most real caches.
ESTIMATORS: dict[str, tuple[type[BaseEstimator], dict[str, Any]]] = {
    "logistic_regression": (LogisticRegression, {"max_iter": 2000}),
    "linear_svm": (LinearSVC, {"max_iter": 5000}),
    "sgd": (SGDClassifier, {"loss": "log_loss"}),
    "random_forest": (RandomForestClassifier, {"n_estimators": 200}),
    "extra_trees": (ExtraTreesClassifier, {"n_estimators": 200}),
    "gradient_boosting": (HistGradientBoostingClassifier, {}),
    "knn": (KNeighborsClassifier, {}),
    "mlp": (MLPClassifier, {"max_iter": 500, "early_stopping": True}),
}


@dataclass(frozen=True)
class TrialSpec:
    """One set of parameters for one head: what a sweep trial (or a plain head) fits."""

    head: str
    trial: int
    config: HeadConfig
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def setting(self, key: str) -> Any:
        """features, scale or pca of this trial (a sweep value, else the head's own)."""
        return self.overrides.get(key, getattr(self.config, key))

    def estimator_params(self) -> dict[str, Any]:
        """Parameters passed to the estimator (or dense head): declared, then swept."""
        swept = {k: v for k, v in self.overrides.items() if k not in PIPELINE_KEYS}
        return {**self.config.params, **swept}

    def describe(self) -> dict[str, Any]:
        """Everything that defines this trial, as plain data for leaderboards."""
        described = {"features": self.setting("features")}
        if self.config.kind != "dense":
            described.update(scale=self.setting("scale"), pca=self.setting("pca"))
        return {**described, **self.estimator_params()}


@dataclass
class FittedHead:
    """A trained head: a scikit-learn Pipeline or a Keras model, and its class count."""

    kind: str
    model: Any
    n_classes: int
    fit_seconds: float = 0.0
    history: dict[str, list[float]] | None = None

    def __getstate__(self) -> dict:
        # A Keras model travels (dask, pickle) as the bytes of its .keras file, loaded back
        # in safe mode and without its optimizer: prediction needs neither.
        state = dict(self.__dict__)
        if self.kind == "dense":
            state["model"] = _keras_bytes(self.model)
        return state

    def __setstate__(self, state: dict) -> None:
        if state["kind"] == "dense" and isinstance(state["model"], bytes):
            state["model"] = _keras_from_bytes(state["model"])
        self.__dict__.update(state)

    def predict_proba(self, x: np.ndarray) -> np.ndarray | None:
        """(N, n_classes) class probabilities, or None when the model gives none (SVM)."""
        if self.kind == "dense":
            out = np.asarray(self.model.predict(x, verbose=0, batch_size=256), np.float64)
            return np.hstack([1 - out, out]) if out.shape[1] == 1 else out
        if not hasattr(self.model, "predict_proba"):
            return None
        proba = self.model.predict_proba(x)
        full = np.zeros((len(x), self.n_classes))
        full[:, self.model.classes_] = proba  # a class absent from training gets probability 0
        return full

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N,) predicted class indices."""
        if self.kind == "dense":
            return self.predict_proba(x).argmax(axis=1)
        return np.asarray(self.model.predict(x), dtype=np.int64)


def _keras_bytes(model) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"
        model.save(path)
        return path.read_bytes()


def _keras_from_bytes(data: bytes):
    from ._tf import keras

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"
        path.write_bytes(data)
        return keras.saving.load_model(path, compile=False, safe_mode=True)


def build_estimator(kind: str, params: dict[str, Any], seed: int) -> BaseEstimator:
    """The scikit-learn estimator of ``kind`` with ``params`` (unknown names raise ValueError)."""
    cls, defaults = ESTIMATORS[kind]
    estimator = cls(**defaults)
    if "random_state" in estimator.get_params():
        estimator.set_params(random_state=seed)
    estimator.set_params(**params)
    return estimator


def build_sklearn_head(spec: TrialSpec) -> Pipeline:
    """``FeatureView -> [StandardScaler] -> [PCA] -> estimator`` for one trial."""
    steps: list[tuple[str, Any]] = [("features", FeatureView(spec.setting("features")))]
    if spec.setting("scale"):
        steps.append(("scale", StandardScaler()))
    pca = spec.setting("pca")
    if pca is not None:
        steps.append(("pca", PCA(n_components=pca, random_state=spec.seed)))
    steps.append(("model", build_estimator(spec.config.kind, spec.estimator_params(),
                                           spec.seed)))
    return Pipeline(steps)


def build_dense_head(spec: TrialSpec, feature_shape: tuple[int, ...], n_classes: int,
                     logits: bool = False):
    """The source material's dense head on (h, w, c) features; needs Keras.

    The last layer outputs probabilities (sigmoid for two classes, softmax for more) and the
    model is compiled with the optimizer, loss and accuracy of ``spec``. With ``logits`` the
    last layer has no activation and the model is not compiled: that is the model
    :func:`~pipeline.dense_training.train_dense_head` trains, and :func:`finish_dense_head`
    turns it back into the probability model.
    """
    from ._tf import keras

    params = spec.config.dense_params(spec.estimator_params())
    keras.utils.set_random_seed(spec.seed)
    pool = {"flatten": keras.layers.Flatten, "gap": keras.layers.GlobalAveragePooling2D,
            "gmp": keras.layers.GlobalMaxPooling2D}[spec.setting("features")]
    binary = n_classes == 2
    output = None if logits else ("sigmoid" if binary else "softmax")
    model = keras.Sequential([
        keras.Input(shape=feature_shape, name="features"),
        pool(name="feature_view"),
        keras.layers.Dense(params.units, activation="relu", name="hidden"),
        keras.layers.Dropout(params.dropout, name="dropout"),
        keras.layers.Dense(1 if binary else n_classes, activation=output, name="classes"),
    ], name=f"dense_head_{spec.head}")
    if not logits:
        compile_dense_head(model, params, n_classes)
    return model


def finish_dense_head(model, params: DenseParams, n_classes: int) -> None:
    """After training on logits: the last layer outputs probabilities again, and the model is
    compiled with Keras' own classes only (it is pickled to the client and saved)."""
    from ._tf import keras

    model.get_layer("classes").activation = keras.activations.get(
        "sigmoid" if n_classes == 2 else "softmax")
    compile_dense_head(model, params, n_classes)


def keras_optimizer(name: str, learning_rate: float):
    """A new Keras optimizer by name: rmsprop, adam, nadam or sgd."""
    from ._tf import keras

    optimizers = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam,
                  "nadam": keras.optimizers.Nadam, "sgd": keras.optimizers.SGD}
    return optimizers[name](learning_rate=learning_rate)


def dense_optimizer(params: DenseParams, fused: bool = False):
    """A new Keras optimizer of ``params``; ``fused``: RMSprop is :class:`FusedRMSprop` (the
    same updates in one kernel, for training; it is not a Keras class a saved model may name)."""
    if fused and params.optimizer == "rmsprop":
        from .fused_rmsprop import FusedRMSprop
        return FusedRMSprop(learning_rate=params.learning_rate)
    return keras_optimizer(params.optimizer, params.learning_rate)


def compile_dense_head(model, params: DenseParams, n_classes: int) -> None:
    """Compile the probability model with the optimizer, loss and accuracy of ``params``."""
    loss = "binary_crossentropy" if n_classes == 2 else "sparse_categorical_crossentropy"
    model.compile(optimizer=dense_optimizer(params), loss=loss, metrics=["accuracy"])


def fit_head(spec: TrialSpec, train: LabelledSplit, validation: LabelledSplit,
             n_classes: int) -> FittedHead:
    """Fit one trial on ``train``; ``validation`` serves only the dense head's early stopping."""
    started = time.perf_counter()
    if spec.config.kind == "dense":
        model, history = _fit_dense(spec, train, validation, n_classes)
        return FittedHead("dense", model, n_classes, time.perf_counter() - started, history)
    model = build_sklearn_head(spec).fit(train.x, train.y)
    return FittedHead(spec.config.kind, model, n_classes, time.perf_counter() - started)


def _fit_dense(spec: TrialSpec, train: LabelledSplit, validation: LabelledSplit,
               n_classes: int):
    from .dense_training import train_dense_head

    params = spec.config.dense_params(spec.estimator_params())
    model = build_dense_head(spec, train.x.shape[1:], n_classes, logits=True)
    history = train_dense_head(model, dense_optimizer(params, fused=True), params, train,
                               validation, n_classes, seed=spec.seed)
    finish_dense_head(model, params, n_classes)
    return model, history


def check_heads(heads: HeadsConfig, source: str = "stages.yaml") -> None:
    """Check every head's parameters and sweep values against its estimator, before any work.

    Raises ConfigError naming the file, the head and the parameter.
    """
    for name, head in heads.models.items():
        where = f"{source}: stages.heads.models.{name}"
        if head.kind == "dense":
            _check_dense_sweep(where, head)
            continue
        _check_estimator(f"{where}.params", head.kind, head.params)
        for key, values in (head.sweep.params.items() if head.sweep else ()):
            if key in PIPELINE_KEYS:
                continue
            candidates = values if isinstance(values, list) else []
            _check_estimator(f"{where}.sweep.params", head.kind, {key: None}, names_only=True)
            for value in candidates:
                _check_estimator(f"{where}.sweep.params", head.kind,
                                 {**head.params, key: value})
        if head.sweep:
            _check_pipeline_values(where, head)


def _check_estimator(where: str, kind: str, params: dict[str, Any],
                     names_only: bool = False) -> None:
    cls, defaults = ESTIMATORS[kind]
    known = cls(**defaults).get_params()
    for key in params:
        if key not in known:
            raise ConfigError(f"{where}.{key}: {cls.__name__} has no parameter {key!r} "
                              f"(it has: {', '.join(sorted(known))})")
    if names_only:
        return
    estimator = build_estimator(kind, params, seed=0)
    validate = getattr(estimator, "_validate_params", None)  # scikit-learn >= 1.2
    if validate is None:
        return
    try:
        validate()
    except (ValueError, TypeError) as exc:
        message = " ".join(str(exc).split())
        raise ConfigError(f"{where}: {message}") from None


def _check_dense_sweep(where: str, head: HeadConfig) -> None:
    if head.sweep is None:
        return
    for key, values in head.sweep.params.items():
        if key in ("scale", "pca"):
            raise ConfigError(f"{where}.sweep.params.{key}: dense heads have no {key}")
        if key != "features" and key not in DenseParams.model_fields:
            raise ConfigError(f"{where}.sweep.params.{key}: the dense head has no parameter "
                              f"{key!r} (it has: {', '.join(DenseParams.model_fields)})")
        for value in values if isinstance(values, list) else []:
            try:
                if key == "features":
                    FeatureView(value).transform(np.zeros((1, 1, 1, 1), np.float32))
                else:
                    head.dense_params({key: value})
            except Exception as exc:  # noqa: BLE001 (pydantic and ValueError alike)
                message = " ".join(str(exc).split())
                raise ConfigError(f"{where}.sweep.params.{key}: {value!r}: {message}") from None


def _check_pipeline_values(where: str, head: HeadConfig) -> None:
    def pca_ok(value) -> bool:  # the rule of HeadConfig.pca
        if value is None:
            return True
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return value >= 1 if isinstance(value, int) else 0 < value < 1

    checks = {"features": lambda v: v in ("flatten", "gap", "gmp"),
              "scale": lambda v: isinstance(v, bool), "pca": pca_ok}
    for key in PIPELINE_KEYS:
        values = head.sweep.params.get(key)
        for value in values if isinstance(values, list) else []:
            if not checks[key](value):
                raise ConfigError(f"{where}.sweep.params.{key}: {value!r} is not a valid "
                                  f"{key} value")
