"""Trials of every head, fitted and scored on validation, in parallel on dask.distributed.

The training and validation features go to the workers once (``scatter``, broadcast); trials
refer to them. The test split is never sent: selection cannot see it. Only each head's best
model so far is kept, on its worker, and only the winners travel back.

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

import numpy as np
from tqdm import tqdm

from ..cluster import sweep_client
from ..config import ClusterConfig
from ..evaluate import evaluate
from .kind import FittedHead
from .leaderboard import TrialResult, rank_key
from .splits import TrainingData
from .trials import Trial


def fit_and_score(trial: Trial, data: TrainingData) -> tuple[TrialResult, FittedHead | None]:
    """Fit one trial on the training split and score it on the validation split.

    Returns the leaderboard row and the fitted head (None when the trial failed). Never raises
    for a bad parameter combination: the trial is recorded as failed.
    """
    result = TrialResult(trial.head, trial.index, trial.kind.name, trial.describe())
    # Trials run one per worker thread (or in the main thread), so recording is safe here;
    # on a cluster the warnings would otherwise be lost in the workers' logs.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = _fit_and_score(trial, data, result)
    messages = dict.fromkeys(f"{w.category.__name__}: {' '.join(str(w.message).split())}"
                             for w in caught)
    result.warnings = " | ".join(m[:200] for m in messages)[:1000]
    return result, fitted


def _fit_and_score(trial: Trial, data: TrainingData,
                   result: TrialResult) -> FittedHead | None:
    train, validation = data.splits(lazy=trial.reads_in_chunks)
    try:
        fitted = trial.fit(train, validation, data.n_classes)
        predicted, proba = fitted.predict_split(validation, trial.chunk_rows)
        train_predicted, _ = fitted.predict_split(train, trial.chunk_rows)
        scores = evaluate(validation.y, predicted, proba,
                          [str(i) for i in range(data.n_classes)])
    except Exception as exc:  # noqa: BLE001 (one bad setting must not end a sweep)
        result.status = "failed"
        result.error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
        logging.getLogger(__name__).debug("trial failed\n%s", traceback.format_exc())
        return None
    result.val_accuracy = scores.accuracy
    result.val_f1_macro = scores.f1_macro
    result.val_log_loss = scores.log_loss
    result.train_accuracy = float(np.mean(train_predicted == train.y)) if len(train.y) else \
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


def run_trials(trials: list[Trial], data: TrainingData, cluster: ClusterConfig,
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
            for order, trial in enumerate(trials):
                result, model = fit_and_score(trial, data)
                keeper.offer(order, result, model)
                results.append(result)
                bar.update()
            return SweepOutcome(results, keeper.models())
        with sweep_client(cluster) as client:
            return _run_on_cluster(client, trials, data, metric, bar)


def _run_on_cluster(client, trials: list[Trial], data: TrainingData, metric: str,
                    bar) -> SweepOutcome:
    from distributed import as_completed

    [shared] = client.scatter([data], broadcast=True)  # once per worker, not once per trial
    # Each trial is two tasks: the fit, whose (result, model) stays on its worker, and a tiny
    # one that brings back only the result. Models travel only when they are a head's best.
    fitted, rows = {}, {}
    for order, trial in enumerate(trials):
        tag = f"{trial.head}-{trial.index}-{os.urandom(4).hex()}"
        fitted[order] = client.submit(fit_and_score, trial, shared, pure=False,
                                      priority=trial.expected_cost, key=f"trial-{tag}")
        rows[client.submit(itemgetter(0), fitted[order], key=f"row-{tag}")] = order
    keeper = _BestPerHead(metric)
    results: list[TrialResult | None] = [None] * len(trials)
    for future in as_completed(rows):
        order = rows[future]
        try:
            results[order] = future.result()
        except Exception as exc:  # noqa: BLE001 (a worker died: record it, keep the others)
            trial = trials[order]
            results[order] = TrialResult(trial.head, trial.index, trial.kind.name,
                                         trial.describe(), status="failed",
                                         error=f"{type(exc).__name__}: {exc}"[:500])
        let_go = keeper.offer(order, results[order], fitted[order])
        if let_go is not None:
            let_go.release()  # frees the model on its worker
        bar.update()
    models = {head: client.submit(itemgetter(1), pair).result()
              for head, pair in keeper.models().items()}
    return SweepOutcome([r for r in results if r is not None], models)
