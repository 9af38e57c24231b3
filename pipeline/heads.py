"""The heads stage: many cheap models on cached features, selected on validation, tested once.

1. Find the dataset view and the cached features of this backbone fingerprint (no image is
   decoded and no convnet runs here; a missing view or entry is an error that says to extract).
2. Run every trial of every head (sweeps included) on dask, scoring on the validation split.
3. Rank the trials into a leaderboard by the validation metric.
4. For each head, take the model of its best trial (kept from the sweep, not refitted),
   evaluate it on validation, and save the model, its scores, confusion matrix and (dense)
   training history.
5. Evaluate the overall best, the head whose best trial ranks first, once on the test split.

The test split is loaded only at step 5, after every choice has been made, and only one model
ever sees it: per-head test scores would invite choosing a head by its test score.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from cache import FeatureStore

from .config import PipelineConfig
from .errors import NoTestImagesWarning, PipelineError
from .evaluation import evaluate, json_safe, plot_confusion_matrix, write_evaluation
from .features import (
    LabelledSplit,
    check_trainable,
    find_view,
    load_split,
    split_shas_and_labels,
)
from .fingerprint import backbone_fingerprint, backbone_spec
from .head_io import save_head
from .head_models import FittedHead, TrialSpec, check_heads
from .incremental import LazySplit, predict_lazy
from .leaderboard import (
    TrialResult,
    format_leaderboard,
    format_score,
    rank_trials,
    write_leaderboard,
)
from .sweep import TrainingData, expand_trials, run_trials
from .views import DatasetView, view_id, view_path


@dataclass
class HeadOutcome:
    """A head's best trial: its model's scores (validation; test for the overall best only),
    and where it is saved."""

    name: str
    trial: TrialResult
    scores: dict[str, dict]
    folder: Path
    model: FittedHead = field(repr=False)
    spec: TrialSpec = field(repr=False)


def best_outcome(outcomes: list[HeadOutcome]) -> HeadOutcome:
    """The head whose best trial ranks first on the validation metric."""
    return min(outcomes, key=lambda o: o.trial.rank)


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
            + (f" + {sizes['augmented']} augmented views of the train images"
               if sizes.get("augmented") else ""),
            f"  features read from cache {self.fingerprint}: no image decoded, no extraction",
            format_leaderboard(self.ranked),
            f"best: {best.name} (trial {best.trial.trial}), selected by {self.metric}: "
            f"validation accuracy {format_score(best.scores['validation']['accuracy'])}, "
            f"test accuracy {format_score(best.scores['test']['accuracy'])} "
            f"({sizes['test']} test images; the only model evaluated on test)",
        ]
        for outcome in self.outcomes:
            lines.append(f"  {outcome.name:<20} val "
                         f"{format_score(outcome.scores['validation']['accuracy'])}"
                         f"  {outcome.folder}")
        for name in self.failed_heads:
            lines.append(f"  {name:<20} every trial failed; see leaderboard.csv")
        return "\n".join(lines)

    def metrics(self) -> dict[str, float | int | str]:
        """Flat ``heads.*`` keys for metrics.json (NaN left out: JSON has no NaN)."""
        best = self.best
        values: dict[str, float | int | str] = {
            "heads.trials": len(self.ranked),
            "heads.train_images": self.split_sizes["train"],
            "heads.train_augmented_views": self.split_sizes.get("augmented", 0),
            "heads.failed_trials": sum(r.status != "ok" for r in self.ranked),
            "heads.sweep_seconds": round(self.sweep_seconds, 3),
            "heads.seconds": round(self.seconds, 3),
            "heads.best.name": best.name,
            "heads.best.trial": best.trial.trial,
            "heads.best.val_accuracy": best.scores["validation"]["accuracy"],
            "heads.best.test_accuracy": best.scores["test"]["accuracy"],
        }
        for outcome in self.outcomes:
            values[f"heads.{outcome.name}.val_accuracy"] = \
                outcome.scores["validation"]["accuracy"]
        return {k: v for k, v in values.items() if not (isinstance(v, float) and math.isnan(v))}


def run_heads(config: PipelineConfig, output: Path, progress: bool = True) -> HeadsResult:
    """Train, sweep, select and test the heads of ``config`` on cached features.

    Writes ``leaderboard.csv``/``.json`` into ``output`` and one folder per head under
    ``output/heads/``. Raises PipelineError when the view or its features are not cached.
    """
    started = time.perf_counter()
    heads = config.stages.heads
    check_heads(heads, config.source.name if config.source else "stages.yaml")
    spec = backbone_spec(config)
    fingerprint, _ = backbone_fingerprint(spec)
    store = FeatureStore(config.cache.dir, fingerprint)
    view = find_view(store, view_path(config, store), augmented=heads.augmented_views)
    data = _training_data(store, view, heads)
    trials = expand_trials(heads)

    sweep_started = time.perf_counter()
    sweep = run_trials(trials, data, config.cluster, heads.metric, progress=progress)
    sweep_seconds = time.perf_counter() - sweep_started
    ranked = rank_trials(sweep.results, heads.metric)
    write_leaderboard(ranked, output)

    outcomes, failed = [], []
    for name in heads.models:
        best = next((r for r in ranked if r.head == name and r.status == "ok"), None)
        if best is None:
            failed.append(name)
            continue
        trial = next(t for t in trials if t.head == name and t.trial == best.trial)
        model = sweep.best_models[name]
        validation = data.lazy_validation if trial.config.incremental else data.validation
        outcomes.append(HeadOutcome(name, best, {"validation": _score(model, trial, validation,
                                                                      view)},
                                    output / "heads" / name, model, trial))
    if not outcomes:
        raise PipelineError(f"every trial of every head failed (first error: "
                            f"{ranked[0].error}); see {output / 'leaderboard.csv'}")
    winner = best_outcome(outcomes)
    # Every choice is made; only now does the test split come off the disk, for one model.
    if not view.select("test"):
        warnings.warn("the test split has no images: heads are selected on validation but not "
                      "tested", NoTestImagesWarning, stacklevel=2)
    test = _lazy(store, view, "test") if winner.spec.config.incremental else \
        load_split(store, view, "test")
    winner.scores["test"] = _score(winner.model, winner.spec, test, view)
    for outcome in outcomes:
        _save_outcome(outcome, view, view_id(config), fingerprint, store.feature_shape,
                      heads.metric)
    sizes = {s: len(view.select(s)) for s in ("train", "validation", "test")}
    sizes["augmented"] = len(view.augmented_views()) if heads.augmented_views else 0
    scheduler = config.cluster.scheduler
    return HeadsResult(fingerprint, sizes, ranked, outcomes,
                       "one after another" if scheduler == "synchronous" else
                       f"dask {scheduler}", sweep_seconds, time.perf_counter() - started,
                       heads.metric, failed)


def _training_data(store: FeatureStore, view: DatasetView, heads) -> TrainingData:
    check_trainable(view, "heads are trained on train and selected on validation")
    n_classes = len(view.classes)
    # Incremental heads read the cache a chunk at a time; load it whole only for the others.
    in_memory = any(h.incremental is None for h in heads.models.values())
    lazy = any(h.incremental is not None for h in heads.models.values())
    return TrainingData(
        n_classes=n_classes,
        train=load_split(store, view, "train", heads.augmented_views) if in_memory else None,
        validation=load_split(store, view, "validation") if in_memory else None,
        lazy_train=_lazy(store, view, "train", heads.augmented_views) if lazy else None,
        lazy_validation=_lazy(store, view, "validation") if lazy else None)


def _lazy(store: FeatureStore, view: DatasetView, split: str,
          augmented: bool = False) -> LazySplit:
    # chunk_rows is each incremental head's own, applied per trial
    shas, labels = split_shas_and_labels(view, split, augmented)
    return LazySplit(split, store.cache_dir, store.fingerprint, tuple(shas), labels)


def _score(model: FittedHead, spec: TrialSpec, split: LabelledSplit | LazySplit,
           view: DatasetView) -> dict:
    """evaluate() of ``model`` on ``split`` (read a chunk at a time when it is lazy)."""
    if isinstance(split, LazySplit):
        predicted, proba = predict_lazy(model, split, spec)
    elif len(split):
        predicted, proba = model.predict(split.x), model.predict_proba(split.x)
    else:
        predicted, proba = split.y, None
    return evaluate(split.y, predicted, proba, view.classes)


def _save_outcome(outcome: HeadOutcome, view: DatasetView, dataset_view_id: str,
                  fingerprint: str, feature_shape: tuple[int, ...], metric: str) -> None:
    """The head's model, metadata, scores, confusion matrices and (dense) history."""
    folder, best = outcome.folder, outcome.trial
    save_head(outcome.model, folder, {
        "name": outcome.name, "trial": best.trial, "classes": view.classes,
        "dataset_view": dataset_view_id,
        "fingerprint": fingerprint, "feature_shape": list(feature_shape),
        "params": outcome.spec.describe(),
        "selected_by": json_safe({"metric": metric, "rank": best.rank,
                                  "value": getattr(best, metric)})})
    write_evaluation(outcome.scores, folder / "evaluation.json")
    for split, split_scores in outcome.scores.items():
        if split_scores["images"]:
            plot_confusion_matrix(split_scores, folder / f"confusion_{split}.png",
                                  f"{outcome.name} on {split}")
    if outcome.model.history is not None:
        (folder / "history.json").write_text(
            json.dumps(outcome.model.history, indent=2) + "\n", encoding="utf-8")
