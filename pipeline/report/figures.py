"""The report's pictures, as base64 strings to inline: matplotlib figures (PNG) and image
thumbnails (JPEG). matplotlib draws off screen; nothing opens a window."""

from __future__ import annotations

import base64
import io

import numpy as np

SMOOTHING = 0.8  # weight of the previous smoothed point


def smooth(values: list[float], factor: float = SMOOTHING) -> list[float]:
    """Exponential moving average: each point is ``factor`` x previous + (1 - factor) x raw."""
    out: list[float] = []
    for value in values:
        out.append(value if not out else out[-1] * factor + value * (1 - factor))
    return out


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _shown(text: str) -> str:
    """Text for matplotlib: a ``$`` is text, not the start of mathtext."""
    from ..data.names import display_path
    return display_path(text).replace("$", r"\$")


def curves(title: str, history: dict[str, list[float]]) -> str:
    """Accuracy and loss per epoch, raw (faint) and smoothed, training and validation."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    try:
        for ax, metric in zip(axes, ("accuracy", "loss")):
            for key, style in ((metric, "-"), (f"val_{metric}", "--")):
                values = history.get(key)
                if not values:
                    continue
                epochs = range(1, len(values) + 1)
                ax.plot(epochs, values, style, alpha=0.35, label=f"{key} (raw)")
                ax.plot(epochs, smooth(values), style, label=f"{key} (smoothed)")
            ax.set_xlabel("epoch")
            ax.set_title(_shown(f"{title}: {metric}"))
            ax.legend(fontsize=7)
        figure.tight_layout()
        return _png(figure)
    finally:
        plt.close(figure)


def probe_chart(rows: list[dict]) -> str:
    """The probe's validation accuracy per part, best at the top, taps and parts of the output
    in two colours."""
    plt = _pyplot()
    from ..config.heads import OUTPUT_PARTS

    rows = sorted(rows, key=lambda row: float(row["val_accuracy"]))
    figure, axes = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.2))
    try:
        colours = ["#9a9a9a" if row["feature"] in OUTPUT_PARTS else "#3b6ea5" for row in rows]
        values = [float(row["val_accuracy"]) for row in rows]
        axes.barh([_shown(row["feature"]) for row in rows], values, color=colours)
        for y, value in enumerate(values):
            axes.text(value + 0.005, y, f"{value:.3f}", va="center", fontsize=8)
        axes.set_xlim(0, min(1.0, max(values) + 0.1))
        axes.set_xlabel("validation accuracy of a logistic regression (blue: taps; grey: "
                        "parts of the output)")
        figure.tight_layout()
        return _png(figure)
    finally:
        plt.close(figure)


def feature_map(points: np.ndarray, labels: np.ndarray, classes: list[str], title: str) -> str:
    """(N, 2) ``points`` scattered, coloured by class ``labels`` (N,)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 5.5))
    try:
        colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for index, name in enumerate(classes):
            chosen = labels == index
            axes.scatter(points[chosen, 0], points[chosen, 1], s=12, alpha=0.7,
                         color=colours(index % colours.N), label=_shown(name))
        axes.set_xlabel("first principal component")
        axes.set_ylabel("second principal component")
        axes.set_title(_shown(title), fontsize=10)
        axes.legend(fontsize=8, markerscale=1.5)
        figure.tight_layout()
        return _png(figure)
    finally:
        plt.close(figure)


def thumbnail(pixels: np.ndarray, side: int = 112) -> str:
    """A JPEG of the (H, W, 3) uint8 ``pixels``, at most ``side`` pixels a side, as base64."""
    from PIL import Image

    image = Image.fromarray(pixels)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
