"""Scores of a trained model on one split: accuracy, per-class precision/recall/F1, log loss,
confusion matrix; saved as JSON and drawn as a PNG."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cache.files import write_atomic

from .data.names import display_path
from .json_values import json_safe
from .optional_imports import DATAFRAME_LIBRARIES, modules_marked_absent

with modules_marked_absent(DATAFRAME_LIBRARIES):
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        log_loss,
        precision_recall_fscore_support,
    )


@dataclass(frozen=True)
class ClassScores:
    """Precision, recall and F1 of one class, and how many true rows it has."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class SplitScores:
    """The scores of one model on one split (``images`` 0: nothing to score, every score NaN).

    ``confusion_matrix[i][j]`` counts rows of true class ``classes[i]`` predicted as
    ``classes[j]``. ``log_loss`` is NaN for models without probabilities, or whose
    probabilities are not finite (a diverged fit).
    """

    images: int
    accuracy: float
    f1_macro: float
    log_loss: float
    classes: list[str]
    per_class: dict[str, ClassScores] = field(default_factory=dict)
    confusion_matrix: list[list[int]] = field(default_factory=list)

    def to_json(self) -> dict:
        """Plain data as evaluation.json holds it (NaN as null)."""
        return json_safe({
            "images": self.images, "accuracy": self.accuracy, "f1_macro": self.f1_macro,
            "log_loss": self.log_loss,
            "per_class": {name: score.__dict__ for name, score in self.per_class.items()},
            "confusion_matrix": self.confusion_matrix, "classes": self.classes})


def evaluate(y_true: np.ndarray, predicted: np.ndarray, proba: np.ndarray | None,
             classes: list[str]) -> SplitScores:
    """Scores of ``predicted`` (N,) class indices against ``y_true`` (N,).

    ``proba`` (N, C) gives the log loss; it is None (and log_loss NaN) for models without
    probabilities, and NaN too when ``proba`` holds NaN or infinity (a diverged model).
    Classes absent from ``y_true`` still get a row (support 0).
    """
    labels = list(range(len(classes)))
    if len(y_true) == 0:
        return SplitScores(images=0, accuracy=math.nan, f1_macro=math.nan, log_loss=math.nan,
                           classes=classes)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, predicted, labels=labels, zero_division=0)
    loss = math.nan
    # A diverged model (NaN weights) has no meaningful log loss; its accuracy still counts.
    if proba is not None and np.isfinite(proba).all():
        # float32 softmax rows sum to 1 only within ~1e-7; renormalise so log_loss accepts them
        clipped = np.clip(np.asarray(proba, np.float64), 1e-15, 1.0)
        loss = float(log_loss(y_true, clipped / clipped.sum(axis=1, keepdims=True),
                              labels=labels))
    return SplitScores(
        images=int(len(y_true)),
        accuracy=float(accuracy_score(y_true, predicted)),
        f1_macro=float(f1_score(y_true, predicted, labels=labels, average="macro",
                                zero_division=0)),
        log_loss=loss,
        classes=classes,
        per_class={name: ClassScores(float(precision[i]), float(recall[i]), float(f1[i]),
                                     int(support[i])) for i, name in enumerate(classes)},
        confusion_matrix=confusion_matrix(y_true, predicted, labels=labels).tolist())


def write_evaluation(scores: dict[str, SplitScores], path: Path) -> None:
    """``{split: scores}`` as ``evaluation.json`` (NaN written as null)."""
    write_atomic(path, json.dumps({split: s.to_json() for split, s in scores.items()},
                                  indent=2) + "\n")


def plot_confusion_matrix(scores: SplitScores, path: Path, title: str) -> None:
    """Draw the confusion matrix (rows: true class, columns: predicted) as a PNG at ``path``."""
    import matplotlib
    matplotlib.use("Agg")  # files only: never open a window, work without a display
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    matrix = np.asarray(scores.confusion_matrix)
    # printable labels, and a '$' is text, not the start of matplotlib's mathtext
    classes = [display_path(c).replace("$", r"\$") for c in scores.classes]
    side = max(4.0, 0.7 * len(classes) + 2.0)
    figure, axes = plt.subplots(figsize=(side, side))
    try:
        ConfusionMatrixDisplay(matrix, display_labels=classes).plot(
            ax=axes, cmap="Blues", colorbar=False, xticks_rotation=45)
        axes.set_title(f"{title}\naccuracy {scores.accuracy:.3f}, {scores.images} images")
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        write_atomic(path, buffer.getvalue())
    finally:
        plt.close(figure)
