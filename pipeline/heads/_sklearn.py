"""The scikit-learn head kinds: ``FeatureRows -> [StandardScaler] -> [PCA] -> estimator``.

A head is a scikit-learn Pipeline that takes the (N, h, w, c) features directly. ``params`` go
to the estimator as they are, checked against its parameter list and constraints before any
work. Kinds with ``partial_fit`` (``sgd``) can train incrementally: from the lazy cache, a chunk
of rows in memory at a time. Saved with skops (no pickle), loaded only with allowlisted types.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from cache.files import replacing

from ..config import HeadConfig
from ..config.heads import NORMALIZATIONS, PIPELINE_KEYS, check_features
from ..errors import ConfigError, HeadLoadError
from ..optional_imports import DATAFRAME_LIBRARIES, modules_marked_absent
from . import features
from .features import FORMER_NAMES, FORMER_PATH, FeatureRows, rows_of
from .kind import FittedHead, HeadKind
from .splits import LabelledSplit, LazySplit, subset
from .trial import TrialSpec

with modules_marked_absent(DATAFRAME_LIBRARIES):
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

# Types skops does not trust by default that our heads legitimately contain.
TRUSTED_SKOPS_TYPES = (
    f"{FeatureRows.__module__}.FeatureRows",
    *FORMER_NAMES,
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
)
_DISTANCE_METRIC = re.compile(r"^sklearn\.metrics\._dist_metrics\.[A-Za-z]+Distance(64|32)$")


class SklearnKind(HeadKind):
    """A head whose model is the scikit-learn estimator ``estimator``, created with
    ``defaults`` (where they differ from scikit-learn's) and then the head's ``params``."""

    model_file = "model.skops"
    preprocessing = PIPELINE_KEYS
    takes_rows = True

    def __init__(self, name: str, estimator: type[BaseEstimator], defaults: dict[str, Any],
                 relative_cost: int = 1, max_train_rows: int | None = None,
                 max_train_rows_reason: str = "", predicts_by_proba: bool = False):
        self.name = name
        self.estimator = estimator
        self.defaults = defaults
        self.relative_cost = relative_cost
        self.predicts_by_proba = predicts_by_proba
        self.max_train_rows = max_train_rows
        self.max_train_rows_reason = max_train_rows_reason

    # -- checking --------------------------------------------------------------------------

    def build_estimator(self, params: dict[str, Any], seed: int) -> BaseEstimator:
        """The estimator with ``params`` (unknown names raise ValueError) and ``seed`` as its
        random_state where it has one."""
        estimator = self.estimator(**self.defaults)
        if "random_state" in estimator.get_params():
            estimator.set_params(random_state=seed)
        estimator.set_params(**params)
        return estimator

    def check(self, where: str, head: HeadConfig) -> None:
        """Parameter names and values (declared and swept) against the estimator's own list
        and constraints, and swept features/scale/pca values."""
        self._check_params(f"{where}.params", head.params)
        if head.sweep is None:
            return
        for key, values in head.sweep.params.items():
            if key in PIPELINE_KEYS:
                continue
            self._check_params(f"{where}.sweep.params", {key: None}, names_only=True)
            for value in values if isinstance(values, list) else []:
                self._check_params(f"{where}.sweep.params", {**head.params, key: value})
        checks = {"features": _features_ok, "normalize": lambda v: v in NORMALIZATIONS,
                  "scale": lambda v: isinstance(v, bool), "pca": _pca_ok}
        for key in PIPELINE_KEYS:
            values = head.sweep.params.get(key)
            for value in values if isinstance(values, list) else []:
                if not checks[key](value):
                    raise ConfigError(f"{where}.sweep.params.{key}: {value!r} is not a valid "
                                      f"{key} value")

    def _check_params(self, where: str, params: dict[str, Any], names_only: bool = False) -> None:
        known = self.estimator(**self.defaults).get_params()
        for key in params:
            if key not in known:
                raise ConfigError(f"{where}.{key}: {self.estimator.__name__} has no parameter "
                                  f"{key!r} (it has: {', '.join(sorted(known))})")
        if names_only:
            return
        validate = getattr(self.build_estimator(params, seed=0), "_validate_params", None)
        if validate is None:  # scikit-learn < 1.2
            return
        try:
            validate()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: {' '.join(str(exc).split())}") from None

    # -- fitting ---------------------------------------------------------------------------

    def pipeline(self, trial: TrialSpec) -> Pipeline:
        """``FeatureRows -> [StandardScaler] -> [PCA] -> estimator`` for one trial, unfitted."""
        steps: list[tuple[str, Any]] = [("features", FeatureRows(trial.setting("features"),
                                                                 trial.setting("normalize")))]
        if trial.setting("scale"):
            steps.append(("scale", StandardScaler()))
        pca = trial.setting("pca")
        if pca is not None:
            steps.append(("pca", PCA(n_components=pca, random_state=trial.seed)))
        steps.append(("model", self.build_estimator(trial.estimator_params(), trial.seed)))
        return Pipeline(steps)

    def chunk_rows(self, trial: TrialSpec) -> int | None:
        """An ``incremental`` trial reads ``incremental.chunk_rows`` rows of the cache at a
        time."""
        incremental = trial.config.incremental
        return None if incremental is None else incremental.chunk_rows

    def fit(self, trial: TrialSpec, train: LabelledSplit | LazySplit,
            validation: LabelledSplit | LazySplit, n_classes: int) -> FittedHead:
        """Fit the pipeline on ``train`` (``validation`` is not used); an incremental trial
        with ``partial_fit`` over ``train``'s chunks, in bounded memory."""
        started = time.perf_counter()
        if self.chunk_rows(trial) is not None:
            model = self._fit_incremental(trial, train, n_classes)
        else:
            model = self.pipeline(trial).fit(train.x, train.y)
        return FittedHead(self, model, n_classes, time.perf_counter() - started)

    def _fit_incremental(self, trial: TrialSpec, train: LazySplit, n_classes: int) -> Pipeline:
        """The optional scaler fitted in a first pass, then ``epochs`` passes of partial_fit
        over chunks shuffled anew each epoch (seeded): each a draw of rows from the whole
        split (:meth:`~pipeline.heads.splits.SplitReader.chunk_positions`)."""
        if not len(train):
            raise ValueError("an incremental head needs at least one training row")
        chunk_rows = trial.config.incremental.chunk_rows
        rng = np.random.default_rng(trial.seed)
        to_rows = FeatureRows(trial.setting("features"), trial.setting("normalize"))
        scaler = StandardScaler() if trial.setting("scale") else None
        reader = train.reader()
        if scaler is not None:
            for x, _ in reader.chunks(chunk_rows):
                scaler.partial_fit(to_rows.transform(x))
        model = self.build_estimator(trial.estimator_params(), trial.seed)
        classes = np.arange(n_classes)
        for _ in range(trial.config.incremental.epochs):
            for x, y in reader.chunks(chunk_rows, rng=rng):
                rows = to_rows.transform(x)
                if scaler is not None:
                    rows = scaler.transform(rows)
                model.partial_fit(rows, y, classes=classes)
        # FeatureRows learns nothing; fitting it on a row of the last chunk records the width.
        steps = [("features", to_rows.fit(subset(x, slice(0, 1))))]
        if scaler is not None:
            steps.append(("scale", scaler))
        steps.append(("model", model))
        return Pipeline(steps)

    # -- using -----------------------------------------------------------------------------

    def predict_proba(self, model: Pipeline, x: np.ndarray, n_classes: int) -> np.ndarray | None:
        """Probabilities from the estimator's ``predict_proba`` (None without one, as for
        LinearSVC); a class absent from training gets probability 0."""
        if not hasattr(model, "predict_proba"):
            return None
        proba = model.predict_proba(x)
        full = np.zeros((rows_of(x), n_classes))
        full[:, model.classes_] = proba
        return full

    def predict(self, model: Pipeline, x: np.ndarray, n_classes: int) -> np.ndarray:
        """The estimator's ``predict``."""
        return np.asarray(model.predict(x), dtype=np.int64)

    def save(self, model: Pipeline, folder: Path) -> Path:
        """``model.skops`` (skops, no pickle); the model's large arrays streamed into the
        same zip file beside skops' state (:data:`STREAMED_ARRAY_BYTES`)."""
        skops_io = _skops_io()

        path = folder / self.model_file
        with replacing(path, keep_suffix=True) as temp, _large_arrays_detached(model) as large:
            skops_io.dump(model, temp)
            if large:
                with zipfile.ZipFile(temp, "a", allowZip64=True) as archive:
                    for name, array in large.items():
                        with archive.open(name, "w", force_zip64=True) as member:
                            np.lib.format.write_array(member, array, allow_pickle=False)
        return path

    def load(self, path: Path) -> Pipeline:
        """A ``model.skops`` whose every type is on the allowlist of what our heads contain
        (its streamed arrays put back where they were)."""
        skops_io = _skops_io()

        try:
            untrusted = skops_io.get_untrusted_types(file=path)
        except Exception as exc:  # noqa: BLE001 (a damaged zip raises many kinds)
            raise HeadLoadError(f"{path}: cannot read: {exc}") from None
        refused = [t for t in untrusted
                   if t not in TRUSTED_SKOPS_TYPES and not _DISTANCE_METRIC.match(t)]
        if refused:
            raise HeadLoadError(f"{path}: refusing to load types no head of this pipeline "
                                f"contains: {', '.join(refused)}")
        with _former_module_path(FORMER_PATH in untrusted):
            model = skops_io.load(path, trusted=untrusted)
        try:
            _put_back_streamed_arrays(model, path)
        except (OSError, ValueError, EOFError, MemoryError, zipfile.BadZipFile) as exc:
            raise HeadLoadError(f"{path}: cannot read: {exc}") from None
        return model


#: A fitted step's array attribute this large or larger (a kNN head's training rows: 430 MB
#: at 70,000 rows of 1,536 numbers) is written into the model file by streaming, beside
#: skops' state: skops builds each array's .npy in a growing in-memory buffer first, which at
#: that size held up to two more copies of the array for a moment, the peak of a whole sweep.
STREAMED_ARRAY_BYTES = 64 * 1024 ** 2
#: Where in the model file's zip such an array is: ``streamed-arrays/<step>/<attribute>.npy``.
_STREAMED = "streamed-arrays/"
#: The .npy header readers by format version (numpy writes 1.0, or 2.0 for huge headers).
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}


def _put_back_streamed_arrays(model: Pipeline, path: Path) -> None:
    """Set each array streamed into the model file at ``path`` on its step. A member that
    would set anything but a fitted attribute the step's class does not define (a method, a
    dunder, a step the model lacks) is refused: the file is not one this pipeline wrote."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename
            if not name.startswith(_STREAMED):
                continue
            step, _, attribute = name[len(_STREAMED):].removesuffix(".npy").partition("/")
            estimator = model.named_steps.get(step)
            if estimator is None or not name.endswith(".npy") or \
                    not attribute.isidentifier() or attribute.startswith("__") or \
                    hasattr(type(estimator), attribute):
                raise HeadLoadError(f"{path}: an array for no fitted attribute of the model: "
                                    f"{name}")
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version not in _NPY_HEADERS:
                    raise HeadLoadError(f"{path}: {name}: .npy format {version} is not one "
                                        f"this pipeline writes")
                shape, _, dtype = _NPY_HEADERS[version](member)
                if int(np.prod(shape)) * dtype.itemsize > info.file_size:
                    raise HeadLoadError(f"{path}: {name} says it holds more bytes than it "
                                        f"does")
            with archive.open(info) as member:
                # read a chunk at a time into the array: no second copy in memory
                setattr(estimator, attribute,
                        np.lib.format.read_array(member, allow_pickle=False))


@contextlib.contextmanager
def _large_arrays_detached(model: Pipeline):
    """Take the pipeline's large arrays (:data:`STREAMED_ARRAY_BYTES`) off their steps for the
    ``with`` block, yielding {zip member name: array}; they are put back when it ends."""
    large: dict[str, tuple[Any, str, np.ndarray]] = {}
    for step, estimator in model.steps:
        for attribute, value in list(vars(estimator).items()):
            if isinstance(value, np.ndarray) and value.dtype != object and \
                    value.nbytes >= STREAMED_ARRAY_BYTES:
                large[f"{_STREAMED}{step}/{attribute}.npy"] = (estimator, attribute, value)
                delattr(estimator, attribute)
    try:
        yield {name: array for name, (_, _, array) in large.items()}
    finally:
        for estimator, attribute, array in large.values():
            setattr(estimator, attribute, array)


#: Array libraries whose scikit-learn wrappers skops imports for nothing a head uses.
_NOT_FOR_SKOPS = ("torch", "dask")


def _skops_io():
    """``skops.io``, imported without importing torch or dask. On import, skops lists every
    scikit-learn estimator by importing every scikit-learn package, the array-API wrappers of
    torch and dask among them, which import those libraries where they are installed (the
    PyTorch backend's extra; dask for sweeps): 1.3 s of every heads run for nothing a head
    uses (0.27 s without them). Heads are saved and loaded after a sweep's workers are gone,
    with no other thread importing."""
    if "skops.io" not in sys.modules:
        with modules_marked_absent(_NOT_FOR_SKOPS):
            import skops.io  # noqa: F401 (kept in sys.modules)
    return sys.modules["skops.io"]


def _features_ok(value) -> bool:
    try:
        check_features(value)
    except ValueError:
        return False
    return True


def _pca_ok(value) -> bool:
    """The rule of HeadConfig.pca: None, a whole number >= 1 or a fraction in (0, 1)."""
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return value >= 1 if isinstance(value, int) else 0 < value < 1


@contextlib.contextmanager
def _former_module_path(needed: bool):
    """Heads saved before the heads package existed name FeatureRows by its old module; skops
    imports that module by name, so it is the current one while such a file loads."""
    former = FORMER_PATH.rsplit(".", 1)[0]
    if not needed or former in sys.modules:
        yield
        return
    sys.modules[former] = features
    try:
        yield
    finally:
        del sys.modules[former]


# kind -> (estimator class, defaults that differ from scikit-learn's). The iteration limits are
# raised because 8,192 unscaled features converge slowly; the defaults would stop with a
# ConvergenceWarning on most real caches.
SKLEARN_HEAD_KINDS = (
    # predict is the argmax of the (multinomial or normalised one-vs-rest) probabilities
    SklearnKind("logistic_regression", LogisticRegression, {"max_iter": 2000},
                predicts_by_proba=True),
    SklearnKind("linear_svm", LinearSVC, {"max_iter": 5000}),
    # one-vs-rest probabilities that saturate at 1 for several classes: predict decides
    SklearnKind("sgd", SGDClassifier, {"loss": "log_loss"}),
    SklearnKind("random_forest", RandomForestClassifier, {"n_estimators": 200}, relative_cost=2,
                predicts_by_proba=True),
    SklearnKind("extra_trees", ExtraTreesClassifier, {"n_estimators": 200}, relative_cost=2,
                predicts_by_proba=True),
    SklearnKind("gradient_boosting", HistGradientBoostingClassifier, {}, relative_cost=2,
                predicts_by_proba=True),
    SklearnKind("knn", KNeighborsClassifier, {}, max_train_rows=200_000,
                max_train_rows_reason=(
                    "kNN compares every image it scores with every training row, so scoring "
                    "the validation split alone would take hours; a linear head "
                    "(logistic_regression, sgd) trains on millions of rows"),
                predicts_by_proba=True),
    SklearnKind("mlp", MLPClassifier, {"max_iter": 500, "early_stopping": True},
                relative_cost=2, predicts_by_proba=True),
)
