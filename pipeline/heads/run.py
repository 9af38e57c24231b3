"""The heads stage: many cheap models on cached features, selected on validation, tested once.

1. Find the dataset view and the cached features of this backbone fingerprint (no image is
   decoded and no convnet runs here; a missing view or entry is an error that says to extract).
2. Run every trial of every head (sweeps included), in this process (a large sweep's dense
   trials in a child process) or on dask, scoring on the validation split.
3. Rank the trials into a leaderboard by the validation metric.
4. For each head, take the model of its best trial and its validation scores (kept from the
   sweep: not refitted, not predicted again), and save the model, its scores, confusion
   matrix and (dense) training history: every head but the overall best first, each model
   let go once saved.
5. Evaluate the overall best, the head whose best trial ranks first, once on the test split,
   and save it.

The test split is loaded only at step 5, after every choice has been made, and only one model
ever sees it: per-head test scores would invite choosing a head by its test score.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cache import FeatureStore
from cache.files import write_atomic

from .. import metric_keys as keys
from ..config import OUTPUT, check_heads_read_what_is_cached
from ..context import RunContext
from ..data.view import DatasetView
from ..errors import NoTestImagesWarning, PipelineError
from ..evaluate import SplitScores, evaluate, plot_confusion_matrix, write_evaluation
from ..json_values import json_safe
from .kind import FittedHead
from .leaderboard import (
    TrialResult,
    format_leaderboard,
    format_score,
    rank_trials,
    write_leaderboard,
)
from .registry import check_heads
from .saving import save_head
from .splits import TrainingData, lazy_split
from .sweep import run_trials, runs_in_process, runs_runtimes_apart
from .trials import Trial, expand_trials

#: The best head's answer for each test image, written into its folder (the report's gallery).
PREDICTIONS_NAME = "predictions_test.csv"


@dataclass
class HeadOutcome:
    """A head's best trial: its model's scores (validation; test for the overall best only),
    and where it is saved."""

    name: str
    result: TrialResult
    scores: dict[str, SplitScores]
    folder: Path
    #: None once saved, for every head but the overall best
    model: FittedHead | None = field(repr=False)
    trial: Trial = field(repr=False)


def best_outcome(outcomes: list[HeadOutcome]) -> HeadOutcome:
    """The head whose best trial ranks first on the validation metric."""
    return min(outcomes, key=lambda o: o.result.rank)


@dataclass
class HeadsResult:
    """What the heads stage did, for the summary and metrics.json."""

    fingerprint: str
    split_sizes: dict[str, int]
    ranked: list[TrialResult]
    outcomes: list[HeadOutcome]
    scheduler: str
    sweep_seconds: float
    seconds: float
    metric: str
    failed_heads: list[str] = field(default_factory=list)

    @property
    def best(self) -> HeadOutcome:
        """The head whose best trial ranks first on validation."""
        return best_outcome(self.outcomes)

    def summary(self) -> str:
        """Printable report: what was read, the leaderboard's top, the best head's scores."""
        sizes = self.split_sizes
        best = self.best
        lines = [
            f"heads: {len(self.ranked)} trials of {len(self.outcomes) + len(self.failed_heads)} "
            f"heads in {self.sweep_seconds:.1f} s ({self.scheduler}), on "
            f"{sizes['train']} train / {sizes['validation']} validation images"
            + (f" + {sizes['augmented']} augmented copies of the train images"
               if sizes.get("augmented") else ""),
            f"  features read from cache {self.fingerprint}: no image decoded, no extraction",
            format_leaderboard(self.ranked),
            f"best: {best.name} (trial {best.result.trial}), selected by {self.metric}: "
            f"validation accuracy {format_score(best.scores['validation'].accuracy)}, "
            f"test accuracy {format_score(best.scores['test'].accuracy)} "
            f"({sizes['test']} test images; the only model evaluated on test)",
        ]
        for outcome in self.outcomes:
            lines.append(f"  {outcome.name:<20} val "
                         f"{format_score(outcome.scores['validation'].accuracy)}"
                         f"  {outcome.folder}")
        for name in self.failed_heads:
            lines.append(f"  {name:<20} every trial failed; see leaderboard.csv")
        return "\n".join(lines)

    def metrics(self) -> dict[str, float | int | str]:
        """Flat ``heads.*`` keys for metrics.json (NaN left out: JSON has no NaN)."""
        best = self.best
        values: dict[str, float | int | str] = {
            keys.HEADS_TRIALS: len(self.ranked),
            keys.HEADS_TRAIN_IMAGES: self.split_sizes["train"],
            keys.HEADS_TRAIN_AUGMENTED_COPIES: self.split_sizes.get("augmented", 0),
            keys.HEADS_FAILED_TRIALS: sum(r.status != "ok" for r in self.ranked),
            keys.HEADS_SWEEP_SECONDS: round(self.sweep_seconds, 3),
            keys.HEADS_SECONDS: round(self.seconds, 3),
            keys.HEADS_BEST_NAME: best.name,
            keys.HEADS_BEST_TRIAL: best.result.trial,
            keys.HEADS_BEST_VAL_ACCURACY: best.scores["validation"].accuracy,
            keys.HEADS_BEST_TEST_ACCURACY: best.scores["test"].accuracy,
        }
        for outcome in self.outcomes:
            values[keys.head_val_accuracy(outcome.name)] = outcome.scores["validation"].accuracy
        return {k: v for k, v in values.items() if not (isinstance(v, float) and math.isnan(v))}


def run_heads(ctx: RunContext, output: Path, progress: bool = True) -> HeadsResult:
    """Train, sweep, select and test the heads of the configuration on cached features.

    Writes ``leaderboard.csv``/``.json`` into ``output`` and one folder per head under
    ``output/heads/``. Raises PipelineError when the view or its features are not cached.
    """
    started = time.perf_counter()
    config = ctx.config
    heads = config.stages.heads
    check_heads_read_what_is_cached(config)
    check_heads(heads, config.source_name)
    trials = expand_trials(heads)
    sources = tuple(dict.fromkeys(source for trial in trials for source in trial.sources))
    stores = {source: ctx.stores[source] for source in sources}
    view = ctx.require_view(sources, augmented=heads.augmented_copies)
    view.check_trainable("heads are trained on train and selected on validation")
    data = _training_data(stores, view, heads.augmented_copies, heads.memory_budget_mb * 2**20)

    sweep_started = time.perf_counter()
    in_process = runs_in_process(trials, data, config.cluster, heads.memory_budget_mb)
    apart = (in_process and config.cluster.scheduler == "auto"
             and runs_runtimes_apart(trials, data))
    sweep = run_trials(trials, data, config.cluster, heads.metric, progress=progress,
                       in_process=in_process, runtimes_apart=apart)
    sweep_seconds = time.perf_counter() - sweep_started
    data.release()
    ranked = rank_trials(sweep.results, heads.metric)
    write_leaderboard(ranked, output)

    outcomes, failed = [], []
    for name in heads.models:
        best = next((r for r in ranked if r.head == name and r.status == "ok"), None)
        if best is None:
            failed.append(name)
            continue
        trial = next(t for t in trials if t.head == name and t.index == best.trial)
        # scored on validation in the sweep: not predicted again; taken out of the sweep's
        # outcome so that the model goes once it is saved
        kept = sweep.best.pop(name)
        outcomes.append(HeadOutcome(name, best, {"validation": kept.validation},
                                    output / "heads" / name, kept.model, trial))
    kept = None  # or the last head's model would outlive its saving, below
    if not outcomes:
        raise PipelineError(f"every trial of every head failed (first error: "
                            f"{ranked[0].error}); see {output / 'leaderboard.csv'}")
    winner = best_outcome(outcomes)
    # The others first, each model let go once saved: a kNN head's model holds its training
    # rows, and testing a dense winner that came packed from another process loads Keras
    for outcome in outcomes:
        if outcome is not winner:
            _save_outcome(outcome, view, ctx, heads.metric)
            outcome.model = None
    # Every choice is made; only now does the test split come off the disk, for one model.
    if not view.select("test"):
        warnings.warn("the test split has no images: heads are selected on validation but not "
                      "tested", NoTestImagesWarning, stacklevel=2)
    # read a chunk at a time: the test split may be as large as the training rows were
    test = lazy_split(stores, view, "test")
    predicted, proba = winner.model.predict_split(test, winner.trial.chunk_rows)
    winner.scores["test"] = evaluate(test.y, predicted, proba, view.classes)
    _save_outcome(winner, view, ctx, heads.metric)
    write_predictions(view, "test", predicted, proba, winner.folder / PREDICTIONS_NAME)
    sizes = {s: len(view.select(s)) for s in ("train", "validation", "test")}
    sizes["augmented"] = len(view.augmented_copies()) if heads.augmented_copies else 0
    scheduler = config.cluster.scheduler
    return HeadsResult(ctx.fingerprint.id, sizes, ranked, outcomes,
                       ("in this process, its dense trials in a child process" if apart
                        else "in this process") if in_process else
                       f"dask {'local' if scheduler == 'auto' else scheduler}",
                       sweep_seconds, time.perf_counter() - started,
                       heads.metric, failed)


def _training_data(stores: dict[str, FeatureStore], view: DatasetView, augmented: bool,
                   memory_budget: int | None = None) -> TrainingData:
    """The training and validation rows of the view, named, to be read by whichever process
    runs each trial (with ``augmented``, the cached augmented copies of the training images
    too); dense heads stream features of more than ``memory_budget`` bytes."""
    return TrainingData(
        classes=tuple(view.classes),
        train=lazy_split(stores, view, "train", augmented),
        validation=lazy_split(stores, view, "validation"),
        shapes={source: tuple(store.feature_shape) for source, store in stores.items()},
        memory_budget=memory_budget)


def write_predictions(view: DatasetView, split: str, predicted: np.ndarray,
                      proba: np.ndarray | None, path: Path) -> None:
    """``path,class,predicted,probability`` per image of ``split`` (the probability the head
    gives its answer; empty for heads without probabilities), in view order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "class", "predicted", "probability"])
    for row, image in enumerate(view.select(split)):
        answer = int(predicted[row])
        writer.writerow([image.path, image.label, view.classes[answer],
                         "" if proba is None else f"{proba[row, answer]:.6f}"])
    write_atomic(path, buffer.getvalue(), errors="backslashreplace")


def _save_outcome(outcome: HeadOutcome, view: DatasetView, ctx: RunContext,
                  metric: str) -> None:
    """The head's model, metadata, scores, confusion matrices and training history."""
    folder, best = outcome.folder, outcome.result
    sources = {source: ctx.stores[source] for source in outcome.trial.sources}
    shape = {"feature_shape": list(sources[OUTPUT].feature_shape)} if OUTPUT in sources else {}
    save_head(outcome.model, folder, {
        "name": outcome.name, "trial": best.trial, "classes": view.classes,
        "dataset_view": ctx.view_id, "fingerprint": ctx.fingerprint.id, **shape,
        "sources": {source: store.fingerprint for source, store in sources.items()},
        "params": outcome.trial.describe(),
        "selected_by": json_safe({"metric": metric, "rank": best.rank,
                                  "value": getattr(best, metric)})})
    write_evaluation(outcome.scores, folder / "evaluation.json")
    for split, split_scores in outcome.scores.items():
        if split_scores.images:
            plot_confusion_matrix(split_scores, folder / f"confusion_{split}.png",
                                  f"{outcome.name} on {split}")
    if outcome.model.history is not None:
        write_atomic(folder / "history.json", json.dumps(outcome.model.history, indent=2) + "\n")
