"""Trials of every head, run in parallel on dask.distributed (see cluster.py).

Each head in ``stages.heads.models`` gives one trial (its declared parameters) or, with a
``sweep``, one per grid point or random draw (scikit-learn's ParameterGrid / ParameterSampler).
The training and validation features go to the workers once (``scatter``, broadcast); trials
refer to them. The test split is never sent: selection cannot see it.

``cluster.scheduler``: ``local`` starts a LocalCluster with one single-threaded worker process
per core; ``synchronous`` runs trials one after another in this process; an address such as
``tcp://host:8786`` uses a running scheduler whose workers can import this package.
"""

from __future__ import annotations

import logging
import math
import os
import traceback
import warnings
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
from scipy import stats
from sklearn.model_selection import ParameterGrid, ParameterSampler
from tqdm import tqdm

from .cluster import sweep_client
from .config import ClusterConfig, HeadsConfig
from .evaluation import evaluate
from .features import LabelledSplit
from .head_models import FittedHead, TrialSpec, fit_head
from .incremental import LazySplit, fit_incremental, predict_lazy
from .leaderboard import TrialResult, rank_key


@dataclass(frozen=True)
class TrainingData:
    """What trials train and select on: training and validation splits, never test.

    ``train``/``validation`` are in memory (None when every head is incremental);
    ``lazy_train``/``lazy_validation`` name the same rows for incremental heads.
    """

    n_classes: int
    train: LabelledSplit | None = None
    validation: LabelledSplit | None = None
    lazy_train: LazySplit | None = None
    lazy_validation: LazySplit | None = None


def expand_trials(heads: HeadsConfig) -> list[TrialSpec]:
    """Every trial of every head, in declaration order, then grid or sampling order."""
    trials = []
    for name, head in heads.models.items():
        if head.sweep is None:
            settings: list[dict[str, Any]] = [{}]
        elif head.sweep.method == "grid":
            settings = list(ParameterGrid(head.sweep.params))
        else:
            settings = _sample(head.sweep.params, head.sweep.n_trials, head.sweep.seed)
        trials.extend(TrialSpec(name, i, head, {k: _plain(v) for k, v in s.items()},
                                heads.seed) for i, s in enumerate(settings))
    return trials


def _sample(params: dict[str, Any], n_trials: int, seed: int) -> list[dict[str, Any]]:
    spaces = {}
    for name, values in params.items():
        if isinstance(values, list):
            spaces[name] = values
            continue
        spaces[name] = _distribution(*next(iter(values.items())))
    if all(isinstance(v, list) for v in spaces.values()):
        # ParameterSampler samples finite grids without replacement and warns when asked for
        # more points than exist; take them all instead.
        n_trials = min(n_trials, len(ParameterGrid(spaces)))
    return list(ParameterSampler(spaces, n_iter=n_trials, random_state=seed))


def _distribution(kind: str, bounds: list[float]):
    """A scipy.stats distribution over [low, high] (randint: both ends included)."""
    low, high = bounds
    if kind == "loguniform":
        return stats.loguniform(low, high)
    if kind == "uniform":
        return stats.uniform(low, high - low)
    return stats.randint(low, high + 1)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, so parameters validate strictly and print cleanly."""
    return value.item() if isinstance(value, np.generic) else value


def fit_and_score(spec: TrialSpec, data: TrainingData) -> tuple[TrialResult, FittedHead | None]:
    """Fit one trial on the training split and score it on the validation split.

    Returns the leaderboard row and the fitted head (None when the trial failed). Never raises
    for a bad parameter combination: the trial is recorded as failed.
    """
    result = TrialResult(spec.head, spec.trial, spec.config.kind, spec.describe())
    # Trials run one per worker thread (or in the main thread), so recording is safe here;
    # on a cluster the warnings would otherwise be lost in the workers' logs.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = _fit_and_score(spec, data, result)
    messages = dict.fromkeys(f"{w.category.__name__}: {' '.join(str(w.message).split())}"
                             for w in caught)
    result.warnings = " | ".join(m[:200] for m in messages)[:1000]
    return result, fitted


def _fit_and_score(spec: TrialSpec, data: TrainingData,
                   result: TrialResult) -> FittedHead | None:
    try:
        if spec.config.incremental is not None:
            fitted = fit_incremental(spec, data.lazy_train, data.n_classes)
            predicted, proba = predict_lazy(fitted, data.lazy_validation, spec)
            train_predicted, _ = predict_lazy(fitted, data.lazy_train, spec)
            y_val, y_train = data.lazy_validation.y, data.lazy_train.y
        else:
            fitted = fit_head(spec, data.train, data.validation, data.n_classes)
            predicted = fitted.predict(data.validation.x)
            proba = fitted.predict_proba(data.validation.x)
            train_predicted = fitted.predict(data.train.x)
            y_val, y_train = data.validation.y, data.train.y
        scores = evaluate(y_val, predicted, proba, [str(i) for i in range(data.n_classes)])
    except Exception as exc:  # noqa: BLE001 (one bad setting must not end a sweep)
        result.status = "failed"
        result.error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
        logging.getLogger(__name__).debug("trial failed\n%s", traceback.format_exc())
        return None
    result.val_accuracy = scores["accuracy"]
    result.val_f1_macro = scores["f1_macro"]
    result.val_log_loss = scores["log_loss"]
    result.train_accuracy = float(np.mean(train_predicted == y_train)) if len(y_train) else \
        math.nan
    result.fit_seconds = fitted.fit_seconds
    return fitted


@dataclass
class SweepOutcome:
    """Every trial's result, in trial order, and the fitted head of each head's best trial."""

    results: list[TrialResult]
    best_models: dict[str, FittedHead]


class _BestPerHead:
    """Keeps, per head, the model of the best trial seen so far (ranked as in rank_trials)."""

    def __init__(self, metric: str):
        self.metric = metric
        self.best: dict[str, tuple[tuple, object]] = {}

    def offer(self, order: int, result: TrialResult, model) -> object | None:
        """Keep ``model`` if its trial beats the head's best; returns the model let go."""
        if result.status != "ok":
            return model
        key = rank_key(result, order, self.metric)
        held = self.best.get(result.head)
        if held is not None and held[0] <= key:
            return model
        self.best[result.head] = (key, model)
        return held[1] if held else None

    def models(self) -> dict[str, object]:
        return {head: model for head, (_, model) in self.best.items()}


def run_trials(trials: list[TrialSpec], data: TrainingData, cluster: ClusterConfig,
               metric: str = "val_accuracy", progress: bool = True) -> SweepOutcome:
    """Run ``trials`` where ``cluster`` says; results in the order of ``trials``.

    Only each head's best model (by ``metric``) is kept, so a sweep of hundreds of trials
    holds at most one fitted model per head, and the model tested later is the very one that
    was selected (no refit).
    """
    bar = tqdm(total=len(trials), unit="trial", desc="heads", disable=None if progress else True,
               dynamic_ncols=True)
    with bar:
        if cluster.scheduler == "synchronous":
            keeper, results = _BestPerHead(metric), []
            for order, spec in enumerate(trials):
                result, model = fit_and_score(spec, data)
                keeper.offer(order, result, model)
                results.append(result)
                bar.update()
            return SweepOutcome(results, keeper.models())
        with sweep_client(cluster) as client:
            return _run_on_cluster(client, trials, data, metric, bar)


def _run_on_cluster(client, trials: list[TrialSpec], data: TrainingData, metric: str,
                    bar) -> SweepOutcome:
    from distributed import as_completed

    [shared] = client.scatter([data], broadcast=True)  # once per worker, not once per trial
    # Each trial is two tasks: the fit, whose (result, model) stays on its worker, and a tiny
    # one that brings back only the result. Models travel only when they are a head's best.
    fitted, rows = {}, {}
    for order, spec in enumerate(trials):
        tag = f"{spec.head}-{spec.trial}-{os.urandom(4).hex()}"
        fitted[order] = client.submit(fit_and_score, spec, shared, pure=False,
                                      priority=_expected_cost(spec), key=f"trial-{tag}")
        rows[client.submit(itemgetter(0), fitted[order], key=f"row-{tag}")] = order
    keeper = _BestPerHead(metric)
    results: list[TrialResult | None] = [None] * len(trials)
    for future in as_completed(rows):
        order = rows[future]
        try:
            results[order] = future.result()
        except Exception as exc:  # noqa: BLE001 (a worker died: record it, keep the others)
            spec = trials[order]
            results[order] = TrialResult(spec.head, spec.trial, spec.config.kind,
                                         spec.describe(), status="failed",
                                         error=f"{type(exc).__name__}: {exc}"[:500])
        let_go = keeper.offer(order, results[order], fitted[order])
        if let_go is not None:
            let_go.release()  # frees the model on its worker
        bar.update()
    models = {head: client.submit(itemgetter(1), pair).result()
              for head, pair in keeper.models().items()}
    return SweepOutcome([r for r in results if r is not None], models)


def _expected_cost(spec: TrialSpec) -> int:
    """A rough rank of a trial's fit time: dask starts the costly ones first, so a long dense
    head does not begin alone at the end while the other workers sit idle."""
    cost = 2 if spec.config.kind in ("dense", "mlp", "random_forest", "extra_trees",
                                      "gradient_boosting") else 1
    return cost * (2 if spec.setting("features") == "flatten" else 1)


