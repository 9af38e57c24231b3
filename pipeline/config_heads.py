"""The ``stages.heads`` and ``cluster`` sections of stages.yaml, as typed objects.

A head is named in ``stages.heads.models`` and says what it is (``kind``), which view of the
(h, w, c) features it reads, and its parameters; an optional ``sweep`` lists values to search::

    stages:
      heads:
        models:
          dense: {kind: dense}                 # the source material's dense head
          logreg:
            kind: logistic_regression
            features: gap                      # flatten | gap | gmp
            scale: true                        # StandardScaler first
            params: {C: 1.0}
            sweep: {method: grid, params: {C: [0.01, 0.1, 1]}}

Structure and types are checked here, when the file is read. Whether ``params`` are
parameters the chosen estimator accepts is checked by :func:`pipeline.head_models.check_heads`
before a run that trains heads starts, because it needs scikit-learn imported.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]

FEATURE_VIEWS = ("flatten", "gap", "gmp")
SKLEARN_KINDS = ("logistic_regression", "linear_svm", "sgd", "random_forest", "extra_trees",
                 "gradient_boosting", "knn", "mlp")
HEAD_KINDS = ("dense", *SKLEARN_KINDS)
# Sweep keys that change the preprocessing around the estimator, not the estimator itself.
PIPELINE_KEYS = ("features", "scale", "pca")
METRICS = {"val_accuracy": "max", "val_f1_macro": "max", "val_log_loss": "min"}
DISTRIBUTIONS = ("loguniform", "uniform", "randint")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)


class DenseParams(_Section):
    """The dense head of the source material and how it is trained."""

    units: Int = Field(256, ge=1, le=65_536)
    dropout: Float = Field(0.5, ge=0, lt=1)
    optimizer: Literal["rmsprop", "adam", "nadam", "sgd"] = "rmsprop"
    learning_rate: Float = Field(2e-5, gt=0, le=10)
    epochs: Int = Field(30, ge=1, le=100_000)
    batch_size: Int = Field(20, ge=1, le=1_000_000)
    # Early stopping on validation accuracy; null turns it off.
    patience: Optional[Int] = Field(5, ge=0)
    restore_best: Bool = True


class SweepConfig(_Section):
    """Values to search for some of a head's parameters.

    ``params`` maps a parameter (an estimator parameter, a dense head parameter, or one of
    features, scale, pca) to a list of values, or for ``random`` to a distribution
    ``{loguniform: [low, high]}``, ``{uniform: [low, high]}`` or ``{randint: [low, high]}``.
    """

    method: Literal["grid", "random"] = "grid"
    params: dict[str, Any]
    n_trials: Int = Field(10, ge=1, le=100_000)  # random search only
    seed: Int = 0

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
        _reject_non_finite("params", self.params)
        for key in ("features", "scale", "pca"):
            if isinstance(self.params.get(key), dict):
                raise ValueError(f"{key}: give a list of values, not a distribution")
        if self.method == "grid":
            ranged = [n for n, v in self.params.items() if isinstance(v, dict)]
            if ranged:
                raise ValueError(f"a grid needs lists of values; {', '.join(ranged)} "
                                 f"{'is a' if len(ranged) == 1 else 'are'} distribution "
                                 f"(use method: random)")
        return self


def _reject_non_finite(where: str, value: Any) -> None:
    """NaN and infinity are never a parameter value (and JSON cannot record them)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: {value} is not a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            _reject_non_finite(f"{where}.{key}", item)
    elif isinstance(value, list):
        for item in value:
            _reject_non_finite(where, item)


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


class IncrementalConfig(_Section):
    """Train from the lazy on-disk features a chunk at a time (``sgd`` only)."""

    chunk_rows: Int = Field(1024, ge=1, le=10_000_000)
    epochs: Int = Field(5, ge=1, le=100_000)


class HeadConfig(_Section):
    """One head trained on cached features."""

    kind: Literal[HEAD_KINDS]  # type: ignore[valid-type]
    features: Literal[FEATURE_VIEWS] = "flatten"  # type: ignore[valid-type]
    scale: Bool = False
    # PCA components: a whole number, or a fraction of variance to keep in (0, 1)
    pca: Optional[Union[Int, Float]] = None
    params: dict[str, Any] = Field(default_factory=dict)
    sweep: Optional[SweepConfig] = None
    incremental: Optional[IncrementalConfig] = None

    @field_validator("pca")
    @classmethod
    def _positive(cls, value: Optional[float]) -> Optional[float]:
        if value is not None and (value <= 0 or (isinstance(value, float) and value >= 1)):
            raise ValueError("a number of components (>= 1) or a variance fraction in (0, 1)")
        return value

    @field_validator("params")
    @classmethod
    def _finite(cls, params: dict[str, Any]) -> dict[str, Any]:
        _reject_non_finite("params", params)
        return params

    @model_validator(mode="after")
    def _fits_the_kind(self) -> HeadConfig:
        if self.kind == "dense":
            if self.scale or self.pca is not None:
                raise ValueError("scale and pca apply to scikit-learn heads, not dense")
            try:
                DenseParams.model_validate(self.params)
            except ValidationError as exc:
                raise ValueError(_first_error("params", exc)) from None
        if self.incremental is not None:
            if self.kind != "sgd":
                raise ValueError("incremental training needs kind: sgd (it uses partial_fit)")
            if self.pca is not None:
                raise ValueError("pca cannot be fitted incrementally; leave it out")
            if self.sweep is not None and "pca" in self.sweep.params:
                raise ValueError("pca cannot be fitted incrementally; leave it out of the sweep")
        return self

    def dense_params(self, overrides: dict[str, Any] | None = None) -> DenseParams:
        """The dense head's parameters, with ``overrides`` (one sweep trial) applied."""
        return DenseParams.model_validate({**self.params, **(overrides or {})})


def _first_error(prefix: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join([prefix, *(str(p) for p in err["loc"])])
    message = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
    return f"{where}: {message.removeprefix('Value error, ')}"


class HeadsConfig(_Section):
    """Parameters of the heads stage."""

    models: dict[str, HeadConfig] = Field(
        default_factory=lambda: {"dense": HeadConfig(kind="dense")})
    metric: Literal[tuple(METRICS)] = "val_accuracy"  # type: ignore[valid-type]
    seed: Int = 0  # random_state of every estimator and Keras' seed
    # Train on the cached augmented views of the training images too, when extract made them
    # (stages.extract.augmented_views.count > 0). Validation and test are never augmented.
    augmented_views: Bool = True

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


class ClusterConfig(_Section):
    """Where sweeps and extraction run (dask.distributed)."""

    # local: a LocalCluster on this machine for sweeps, extraction in this process;
    # synchronous: both in this process, one trial after another; or the address of a running
    # scheduler, e.g. tcp://10.0.0.5:8786, whose workers run sweeps and extraction
    scheduler: str = "local"
    workers: Optional[Int] = Field(None, ge=1, le=1024)  # LocalCluster processes; null: cores
    # dask worker resources each extraction partition needs on a scheduler, e.g. {GPU: 1}
    # with one worker per GPU started as `dask worker --resources GPU=1 --nthreads 1`
    worker_resources: dict[str, Float] = Field(default_factory=dict)

    @field_validator("worker_resources")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if not name or not amount > 0 or math.isinf(amount):
                raise ValueError(f"{name!r}: {amount}; resources are names with positive "
                                 f"amounts, such as GPU: 1")
        return value

    @field_validator("scheduler")
    @classmethod
    def _known(cls, value: str) -> str:
        if value in ("local", "synchronous") or "://" in value:
            return value
        raise ValueError("local, synchronous, or a scheduler address such as "
                         "tcp://host:8786")
