"""Scores of a trained head on one split: accuracy, per-class precision/recall/F1, log loss,
confusion matrix; saved as JSON and drawn as a PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
)

from .dataset import display_path


def evaluate(y_true: np.ndarray, predicted: np.ndarray, proba: np.ndarray | None,
             classes: list[str]) -> dict:
    """Scores of ``predicted`` (N,) class indices against ``y_true`` (N,).

    ``proba`` (N, C) gives the log loss; it is None (and log_loss NaN) for models without
    probabilities, and NaN too when ``proba`` holds NaN or infinity (a diverged model).
    Classes absent from ``y_true`` still get a row (support 0).
    """
    labels = list(range(len(classes)))
    if len(y_true) == 0:
        return {"images": 0, "accuracy": math.nan, "f1_macro": math.nan, "log_loss": math.nan,
                "per_class": {}, "confusion_matrix": [], "classes": classes}
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, predicted, labels=labels, zero_division=0)
    loss = math.nan
    # A diverged model (NaN weights) has no meaningful log loss; its accuracy still counts.
    if proba is not None and np.isfinite(proba).all():
        # float32 softmax rows sum to 1 only within ~1e-7; renormalise so log_loss accepts them
        clipped = np.clip(np.asarray(proba, np.float64), 1e-15, 1.0)
        loss = float(log_loss(y_true, clipped / clipped.sum(axis=1, keepdims=True),
                              labels=labels))
    return {
        "images": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, predicted)),
        "f1_macro": float(f1_score(y_true, predicted, labels=labels, average="macro",
                                   zero_division=0)),
        "log_loss": loss,
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])}
                      for i, name in enumerate(classes)},
        "confusion_matrix": confusion_matrix(y_true, predicted, labels=labels).tolist(),
        "classes": classes,
    }


def write_evaluation(scores: dict[str, dict], path: Path) -> None:
    """``{split: evaluate(...)}`` as JSON (NaN written as null)."""
    path.write_text(json.dumps(json_safe(scores), indent=2) + "\n", encoding="utf-8")


def json_safe(value):
    """``value`` with every NaN float, however deep in dicts and lists, replaced by None
    (JSON has no NaN; a missing score reads as null)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def plot_confusion_matrix(scores: dict, path: Path, title: str) -> None:
    """Draw ``scores['confusion_matrix']`` (rows: true class, columns: predicted) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")  # files only: never open a window, work without a display
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    matrix = np.asarray(scores["confusion_matrix"])
    # printable labels, and a '$' is text, not the start of matplotlib's mathtext
    classes = [display_path(c).replace("$", r"\$") for c in scores["classes"]]
    side = max(4.0, 0.7 * len(classes) + 2.0)
    figure, axes = plt.subplots(figsize=(side, side))
    try:
        ConfusionMatrixDisplay(matrix, display_labels=classes).plot(
            ax=axes, cmap="Blues", colorbar=False, xticks_rotation=45)
        axes.set_title(f"{title}\naccuracy {scores['accuracy']:.3f}, "
                       f"{scores['images']} images")
        figure.tight_layout()
        figure.savefig(path, dpi=100)
    finally:
        plt.close(figure)
