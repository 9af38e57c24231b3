"""The ``stages.heads`` section of stages.yaml, as typed objects.

A head is named in ``stages.heads.models`` and says what it is (``kind``), which cached
features it reads, and its parameters; an optional ``sweep`` lists values to search::

    stages:
      heads:
        models:
          dense: {kind: dense}                 # the reference recipe's dense head
          logreg:
            kind: logistic_regression
            features: [block4_conv3.gap, gap]  # taps and parts of the output, concatenated
            normalize: power                   # per part: none | l2 | power (signed sqrt, L2)
            scale: true                        # StandardScaler first
            params: {C: 1.0}
            sweep: {method: grid, params: {C: [0.01, 0.1, 1]}}

Structure and types are checked here, when the file is read. Whether ``params`` are
parameters the chosen estimator accepts is checked by each head kind (:mod:`pipeline.heads`)
before a run that trains heads starts, because it needs scikit-learn imported.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from .. import vgg16
from ._base import OPTIMIZERS, Bool, Float, Int, Section, first_error, reject_non_finite

#: The parts a head can take of the (h, w, c) output tensor: all of it, or its global average
#: or max pool.
OUTPUT_PARTS = ("flatten", "gap", "gmp")
#: How each part of a head's features is normalised before the parts are concatenated.
NORMALIZATIONS = ("none", "l2", "power")
# The head kinds, as stages.yaml names them (pipeline.heads registers one implementation each).
KERAS_KINDS = ("dense",)
SKLEARN_KINDS = ("logistic_regression", "linear_svm", "sgd", "random_forest", "extra_trees",
                 "gradient_boosting", "knn", "mlp")
HEAD_KINDS = (*KERAS_KINDS, *SKLEARN_KINDS)
# Kinds that can learn from the cache a chunk at a time (scikit-learn's partial_fit).
INCREMENTAL_KINDS = ("sgd",)
# Sweep keys that change the preprocessing around the estimator, not the estimator itself.
PIPELINE_KEYS = ("features", "normalize", "scale", "pca")
METRICS = {"val_accuracy": "max", "val_f1_macro": "max", "val_log_loss": "min"}
DISTRIBUTIONS = ("loguniform", "uniform", "randint")


def feature_parts(features: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """A head's ``features`` as a tuple of parts: of the output (flatten, gap, gmp) and
    taps (``<layer>.<pool>``), in the order their vectors are concatenated."""
    return (features,) if isinstance(features, str) else tuple(features)


def check_features(features: Any) -> None:
    """ValueError unless ``features`` is a part or a non-empty list of distinct parts."""
    if isinstance(features, str):
        features = [features]
    if not isinstance(features, (list, tuple)) or not features or \
            not all(isinstance(part, str) for part in features):
        raise ValueError("a part of the output (flatten, gap, gmp), a tap such as "
                         "block4_conv3.gap, or a list of them")
    for part in features:
        if part not in OUTPUT_PARTS:
            vgg16.parse_tap(part)
    if len(set(features)) != len(features):
        raise ValueError(f"{list(features)} names a part twice")


class DenseParams(Section):
    """The dense head (the reference recipe's: Dense ``units`` relu, Dropout, the class layer)
    and how it is trained. The optimizer and learning rate were chosen by measurement on
    flowers-1000 (docs/benchmarks.md), with this batch size, epochs and patience; the source
    material's recipe is ``optimizer: rmsprop``, ``learning_rate: 2.0e-5``, ``batch_size: 20``,
    ``epochs: 30``, ``patience: null`` on unscaled features (the head's ``scale: false``)."""

    units: Int = Field(256, ge=1, le=65_536)
    """Units of the hidden Dense layer (relu)."""
    dropout: Float = Field(0.5, ge=0, lt=1)
    """Dropout rate after the hidden layer."""
    optimizer: Literal[OPTIMIZERS] = "adam"  # type: ignore[valid-type]
    """Keras optimizer: adam, rmsprop, nadam or sgd."""
    learning_rate: Float = Field(1e-3, gt=0, le=10)
    """The optimizer's learning rate."""
    epochs: Int = Field(50, ge=1, le=100_000)
    """Most epochs to train."""
    batch_size: Int = Field(32, ge=1, le=1_000_000)
    """Rows per gradient step."""
    patience: Optional[Int] = Field(10, ge=0)
    """Early stopping on validation accuracy (Keras' EarlyStopping): epochs without a better
    one before training stops; null turns it off."""
    restore_best: Bool = True
    """With early stopping, end with the weights of the best validation epoch."""


class SweepConfig(Section):
    """Values to search for some of a head's parameters.

    ``params`` maps a parameter (an estimator parameter, a dense head parameter, or one of
    features, scale, pca) to a list of values, or for ``random`` to a distribution
    ``{loguniform: [low, high]}``, ``{uniform: [low, high]}`` or ``{randint: [low, high]}``.
    """

    method: Literal["grid", "random"] = "grid"
    """``grid`` (every combination of the listed values) or ``random`` (``n_trials`` draws)."""
    params: dict[str, Any]
    """Parameter name -> list of values, or (random only) ``{loguniform: [low, high]}``,
    ``{uniform: [low, high]}`` or ``{randint: [low, high]}``. Names are estimator parameters,
    dense head parameters, or ``features``, ``normalize``, ``scale``, ``pca``."""
    n_trials: Int = Field(10, ge=1, le=100_000)
    """Trials a random search draws."""
    seed: Int = 0
    """Seed of the random search's draws."""

    @field_validator("params")
    @classmethod
    def _values_or_distributions(cls, params: dict[str, Any]) -> dict[str, Any]:
        if not params:
            raise ValueError("list at least one parameter to sweep")
        for name, values in params.items():
            if isinstance(values, list):
                if not values:
                    raise ValueError(f"{name}: the list of values is empty")
            elif isinstance(values, dict):
                _check_distribution(name, values)
            else:
                raise ValueError(f"{name}: expected a list of values or a distribution "
                                 f"({', '.join(DISTRIBUTIONS)}), not {values!r}")
        return params

    @model_validator(mode="after")
    def _grid_has_lists(self) -> SweepConfig:
        reject_non_finite("params", self.params)
        for key in PIPELINE_KEYS:
            if isinstance(self.params.get(key), dict):
                raise ValueError(f"{key}: give a list of values, not a distribution")
        for value in self.params.get("features", []):
            try:
                check_features(value)
            except ValueError as exc:
                raise ValueError(f"features: {value!r}: {exc}") from None
        if self.method == "grid":
            ranged = [n for n, v in self.params.items() if isinstance(v, dict)]
            if ranged:
                raise ValueError(f"a grid needs lists of values; {', '.join(ranged)} "
                                 f"{'is a' if len(ranged) == 1 else 'are'} distribution "
                                 f"(use method: random)")
        return self


def _check_distribution(name: str, spec: dict) -> None:
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ValueError(f"{name}: a distribution is one of "
                         f"{', '.join(f'{{{d}: [low, high]}}' for d in DISTRIBUTIONS)}")
    kind, bounds = next(iter(spec.items()))
    if (not isinstance(bounds, list) or len(bounds) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)):
        raise ValueError(f"{name}: {kind} needs [low, high] numbers")
    low, high = bounds
    if not low < high:
        raise ValueError(f"{name}: {kind} needs low < high")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"{name}: loguniform needs low > 0")
    if kind == "randint" and not all(isinstance(b, int) for b in bounds):
        raise ValueError(f"{name}: randint needs whole numbers")


class IncrementalConfig(Section):
    """Train from the lazy on-disk features a chunk at a time (``sgd`` only)."""

    chunk_rows: Int = Field(1024, ge=1, le=10_000_000)
    """Rows read from the cache and passed to ``partial_fit`` at a time."""
    epochs: Int = Field(5, ge=1, le=100_000)
    """Passes over the training rows."""


class HeadConfig(Section):
    """One head trained on cached features."""

    kind: Literal[HEAD_KINDS]  # type: ignore[valid-type]
    """What the head is: ``dense`` (Keras), or a scikit-learn estimator:
    ``logistic_regression``, ``linear_svm``, ``sgd``, ``random_forest``, ``extra_trees``,
    ``gradient_boosting``, ``knn``, ``mlp``."""
    features: Union[str, list[str]] = "flatten"
    """What the head reads: ``flatten`` (the whole output tensor), ``gap`` or ``gmp`` (its
    global average or max pool), a tap of ``backbone.taps``, or a list of them (concatenated
    in order)."""
    normalize: Literal[NORMALIZATIONS] = "none"  # type: ignore[valid-type]
    """Per part, before the parts are concatenated: ``none``, ``l2`` (unit length) or
    ``power`` (signed square root, then unit length)."""
    scale: Bool = False
    """Standardise with the training split's statistics: before a scikit-learn estimator a
    StandardScaler (each feature by its own mean and deviation); in a dense head a
    Normalization layer inside the saved model (each feature centred, each part scaled as a
    whole). Left out: true for ``dense`` (gradient steps need inputs of one scale), false for
    scikit-learn kinds."""
    # Left out, the default is true for Keras kinds: see _scale_by_kind.
    pca: Optional[Union[Int, Float]] = None
    """PCA before a scikit-learn estimator: a number of components, or the fraction of
    variance to keep in (0, 1); null: none."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Parameters of the estimator (scikit-learn's names, checked before the run starts) or,
    for ``dense``, of the dense head (``stages.heads.models.<name>.params`` of a dense head
    below)."""
    sweep: Optional[SweepConfig] = None
    """Values to search; every trial is ranked on validation (null: one trial)."""
    incremental: Optional[IncrementalConfig] = None
    """``sgd`` only: train from the cache a chunk of rows at a time, in bounded memory."""
    max_train_rows: Optional[Int] = Field(None, ge=1)
    """The most training rows a trial of this head fits on; with more, the trial fails with
    a message and the others run. null: the kind's own limit, 200,000 for ``knn`` (each image
    it classifies is compared with every training row, so scoring grows with training rows x
    scored rows) and none for the others."""

    @field_validator("features")
    @classmethod
    def _known_parts(cls, value: str | list[str]) -> str | list[str]:
        check_features(value)
        return value

    @field_validator("pca")
    @classmethod
    def _positive(cls, value: Optional[float]) -> Optional[float]:
        if value is not None and (value <= 0 or (isinstance(value, float) and value >= 1)):
            raise ValueError("a number of components (>= 1) or a variance fraction in (0, 1)")
        return value

    @field_validator("params")
    @classmethod
    def _finite(cls, params: dict[str, Any]) -> dict[str, Any]:
        reject_non_finite("params", params)
        return params

    @model_validator(mode="before")
    @classmethod
    def _scale_by_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and "scale" not in data and data.get("kind") in KERAS_KINDS:
            return {**data, "scale": True}
        return data

    @model_validator(mode="after")
    def _fits_the_kind(self) -> HeadConfig:
        if self.kind in KERAS_KINDS:
            if self.pca is not None:
                raise ValueError(f"pca applies to scikit-learn heads, not {self.kind}")
            try:
                DenseParams.model_validate(self.params)
            except ValidationError as exc:
                raise ValueError(first_error("params", exc)) from None
        if self.incremental is not None:
            if self.kind not in INCREMENTAL_KINDS:
                raise ValueError("incremental training needs kind: sgd (it uses partial_fit)")
            if self.pca is not None:
                raise ValueError("pca cannot be fitted incrementally; leave it out")
            if self.sweep is not None and "pca" in self.sweep.params:
                raise ValueError("pca cannot be fitted incrementally; leave it out of the sweep")
        return self

    def dense_params(self, overrides: dict[str, Any] | None = None) -> DenseParams:
        """The dense head's parameters, with ``overrides`` (one sweep trial) applied."""
        return DenseParams.model_validate({**self.params, **(overrides or {})})


class HeadsConfig(Section):
    """Parameters of the heads stage."""

    models: dict[str, HeadConfig] = Field(
        default_factory=lambda: {"dense": HeadConfig(kind="dense")})
    """The heads to train, by name (letters, digits, ``_`` and ``-``: names are folders)."""
    metric: Literal[tuple(METRICS)] = "val_accuracy"  # type: ignore[valid-type]
    """Ranks trials and picks the best head: ``val_accuracy``, ``val_f1_macro`` or
    ``val_log_loss`` (lower is better)."""
    seed: Int = 0
    """``random_state`` of every estimator, and Keras' seed."""
    augmented_copies: Bool = True
    """Train on the cached augmented copies of the training images too, when extract made
    them (``stages.extract.augmented_copies.count`` > 0). Validation and test are never
    augmented."""
    memory_budget_mb: Int = Field(1024, ge=1)
    """Megabytes of cached features a sweep keeps in memory between trials, shared by this
    process and a LocalCluster's workers: each keeps the feature rows it made while they fit
    in its share (the least recently used let go first; kept models, such as a kNN head's
    training rows, are not counted); a dense head whose training and validation features are
    larger than its share streams them from the cache in shuffled chunks (not on a remote
    scheduler, whose workers get the features sent); with ``cluster.scheduler: auto``, a
    sweep whose largest rows would not fit once in this process and once in every worker runs
    in this process."""

    @field_validator("models")
    @classmethod
    def _named(cls, models: dict[str, HeadConfig]) -> dict[str, HeadConfig]:
        if not models:
            raise ValueError("declare at least one head")
        for name in models:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"{name!r}: head names are letters, digits, '_' and '-' "
                                 f"(they name folders)")
        return models
