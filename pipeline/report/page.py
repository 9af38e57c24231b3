"""``pipeline report``: one self-contained HTML page of the pipeline's latest results.

It reads what the stages left (the dataset view, run folders' metrics, leaderboards, histories
and confusion matrices; for each, the newest run folder that has it) and writes a single file
with every figure inlined as a base64 PNG: no network, no side files, and it opens nowhere by
itself. Sections: data, extraction, leaderboard, training curves (raw and
smoothed with an exponential moving average, as the source material plots them), confusion
matrices, and the recipes compared by accuracy and time.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

from cache.files import write_atomic

from .. import metric_keys as keys
from ..context import RunContext
from ..data.names import display_path
from ..data.view import DatasetView
from ..errors import BackboneWeightsError
from ..runs import list_runs

SECTIONS = ("data", "extraction", "leaderboard", "curves", "confusion", "recipes")
# per end-to-end stage: (its test accuracy, its validation accuracy)
_STAGE_ACCURACY = {"finetune": (keys.FINETUNE_TEST_ACCURACY, keys.FINETUNE_VAL_ACCURACY),
                   "scratch": (keys.SCRATCH_TEST_ACCURACY, keys.SCRATCH_VAL_ACCURACY)}
SMOOTHING = 0.8  # weight of the previous smoothed point


def smooth(values: list[float], factor: float = SMOOTHING) -> list[float]:
    """Exponential moving average: each point is ``factor`` x previous + (1 - factor) x raw."""
    out: list[float] = []
    for value in values:
        out.append(value if not out else out[-1] * factor + value * (1 - factor))
    return out


@dataclass
class ReportResult:
    """Where the report went and what it holds."""

    path: Path
    sections: tuple[str, ...]
    figures: int

    def summary(self) -> str:
        """One line: the file and its contents."""
        return f"report: {self.path} ({len(self.sections)} sections, {self.figures} figures)"


class _RunIndex:
    """The run folders, read once: the newest one that has a metric, or that matches."""

    def __init__(self, runs_dir: Path):
        self.runs_dir = runs_dir
        self.runs = list_runs(runs_dir)

    def latest(self, key: str) -> tuple[Path | None, dict]:
        """The newest run folder whose metrics.json has ``key``, and its metrics."""
        return self.newest(lambda metrics: key in metrics)

    def newest(self, wanted) -> tuple[Path | None, dict]:
        """The newest run folder whose metrics satisfy ``wanted(metrics)``, and its metrics."""
        for run in reversed(self.runs):
            if wanted(run.metrics):
                return self.runs_dir / run.name, run.metrics
        return None, {}


def _escape(text) -> str:
    """``text`` for HTML, on one printable line (file and class names may hold any byte)."""
    return html.escape(display_path(str(text)))


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(data: str, alt: str) -> str:
    return f'<img alt="{_escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_escape(_cell(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, str) and "." in value:  # numbers read back from CSV
        try:
            value = float(value)
        except ValueError:
            pass
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _view(ctx: RunContext) -> tuple[DatasetView | None, str]:
    """The dataset view, or None and why there is none to show."""
    try:
        view = ctx.read_view()
    except BackboneWeightsError as exc:
        return None, (f"The backbone's weights are missing, so the dataset view cannot be "
                      f"found: {_escape(str(exc))}")
    return view, "No dataset view yet: run <code>pipeline run extract</code>."


def _data_section(view: DatasetView | None, missing: str) -> str:
    if view is None:
        return f"<p>{missing}</p>"
    counts = view.counts()
    rows = [[label, *(counts[s][label] for s in ("train", "validation", "test")),
             sum(counts[s][label] for s in counts)] for label in view.classes]
    rows.append(["all", *(sum(counts[s].values()) for s in ("train", "validation", "test")),
                 len(view.images)])
    parts = [_table(["class", "train", "validation", "test", "all"], rows)]
    parts.append(f"<h3>Skipped files ({len(view.skipped)})</h3>")
    if view.skipped:
        parts.append(_table(["file", "reason"],
                            [[display_path(s.path), s.reason] for s in view.skipped]))
    leakage = [g for g in view.duplicates if g.kind == "leakage"]
    parts.append(f"<h3>Duplicates ({len(view.duplicates)} groups, {len(leakage)} across "
                 f"splits: leakage)</h3>")
    if view.duplicates:
        parts.append(_table(["kind", "files", "classes", "splits"],
                            [[g.kind, ", ".join(map(display_path, g.paths)),
                              ", ".join(g.classes), ", ".join(g.splits)]
                             for g in view.duplicates]))
    return "".join(parts)


def _extraction_section(runs: _RunIndex) -> str:
    run, metrics = runs.latest(keys.EXTRACT_IMAGES)
    if run is None:
        return "<p>No extraction yet.</p>"
    shown = [("images in the view", keys.EXTRACT_IMAGES), ("new", keys.EXTRACT_IMAGES_NEW),
             ("cached before", keys.EXTRACT_IMAGES_CACHED),
             ("skipped", keys.EXTRACT_IMAGES_SKIPPED),
             ("extraction loop, s", keys.EXTRACT_INFERENCE_SECONDS),
             ("images per second", keys.EXTRACT_IMAGES_PER_SECOND),
             ("whole stage, s", keys.EXTRACT_SECONDS),
             ("augmented views new", keys.EXTRACT_AUGMENTED_VIEWS_NEW),
             ("augmented views cached", keys.EXTRACT_AUGMENTED_VIEWS_CACHED),
             ("backbone fingerprint", keys.EXTRACT_FINGERPRINT)]
    return (f"<p>From run <code>{_escape(run.name)}</code>.</p>" +
            _table(["measure", "value"], [[name, metrics.get(key)] for name, key in shown]))


def _leaderboard_section(runs: _RunIndex) -> str:
    run, metrics = runs.latest(keys.HEADS_TRIALS)
    if run is None or not (run / "leaderboard.csv").is_file():
        return "<p>No heads trained yet: run <code>pipeline run heads</code>.</p>"
    with open(run / "leaderboard.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    columns = ["rank", "head", "kind", "status", "val_accuracy", "val_f1_macro", "fit_seconds",
               "params"]
    return (f"<p>Run <code>{_escape(run.name)}</code>: {metrics['heads.trials']} trials; "
            f"best <b>{_escape(str(metrics.get('heads.best.name')))}</b>, test accuracy "
            f"{_cell(metrics.get('heads.best.test_accuracy'))} (the only model tested).</p>" +
            _table(columns, [[r.get(c, "") for c in columns] for r in rows[:20]]))


def _histories(runs: _RunIndex) -> list[tuple[str, dict]]:
    found = []
    run, metrics = runs.latest(keys.HEADS_TRIALS)
    if run is not None:
        for history in sorted((run / "heads").glob("*/history.json")):
            found.append((f"dense head {history.parent.name}", history))
    for stage, files in (("finetune", ("history_phase1.json", "history_phase2.json")),
                         ("scratch", ("history_train.json",))):
        test_key, val_key = _STAGE_ACCURACY[stage]
        run, _ = runs.latest(test_key)
        if run is None:
            run, _ = runs.latest(val_key)
        for name in files:
            if run is not None and (run / stage / name).is_file():
                found.append((f"{stage} {name.removeprefix('history_').removesuffix('.json')}",
                              run / stage / name))
    loaded = []
    for title, path in found:
        try:
            history = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if history.get("loss"):
            loaded.append((title, history))
    return loaded


def _curves_section(runs: _RunIndex, figures: list[int]) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = []
    for title, history in _histories(runs):
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
                ax.set_title(f"{title}: {metric}")
                ax.legend(fontsize=7)
            figure.tight_layout()
            parts.append(_img(_png(figure), f"{title} curves"))
            figures[0] += 1
        finally:
            plt.close(figure)
    if not parts:
        return "<p>No training history yet.</p>"
    return (f"<p>Faint lines: per epoch; solid: exponential moving average "
            f"(factor {SMOOTHING}).</p>" + "".join(parts))


def _confusion_section(runs: _RunIndex, figures: list[int]) -> str:
    parts = []
    run, metrics = runs.latest(keys.HEADS_TRIALS)
    candidates = []
    if run is not None and metrics.get(keys.HEADS_BEST_NAME):
        candidates.append((f"best head {metrics['heads.best.name']}",
                           run / "heads" / str(metrics[keys.HEADS_BEST_NAME])))
    for stage in ("finetune", "scratch"):
        stage_run, _ = runs.latest(_STAGE_ACCURACY[stage][1])
        if stage_run is not None:
            candidates.append((stage, stage_run / stage))
    for title, folder in candidates:
        for split in ("test", "validation"):
            png = folder / f"confusion_{split}.png"
            if png.is_file():
                data = base64.b64encode(png.read_bytes()).decode("ascii")
                parts.append(f"<figure>{_img(data, f'{title} on {split}')}"
                             f"<figcaption>{_escape(title)}, {split}</figcaption></figure>")
                figures[0] += 1
                break
    return "".join(parts) or "<p>No confusion matrix yet.</p>"


def _recipes_section(runs: _RunIndex) -> str:
    rows = []
    _, scratch = runs.latest(keys.SCRATCH_VAL_ACCURACY)
    if scratch:
        rows.append(["CNN from scratch", scratch.get(keys.SCRATCH_VAL_ACCURACY),
                     scratch.get(keys.SCRATCH_TEST_ACCURACY),
                     scratch.get(keys.SCRATCH_SECONDS)])
    _, extract = runs.latest(keys.EXTRACT_IMAGES)
    _, plain = runs.newest(lambda m: keys.HEADS_TRIALS in m
                           and not m.get(keys.HEADS_TRAIN_AUGMENTED_VIEWS))
    _, views = runs.newest(lambda m: bool(m.get(keys.HEADS_TRAIN_AUGMENTED_VIEWS)))
    for metrics, label in ((plain, "cached features"),
                           (views, f"cached augmented views "
                                   f"({views.get('heads.train_augmented_views')})")):
        if metrics:
            rows.append([f"{label} + {metrics.get('heads.best.name')} head",
                         metrics.get(keys.HEADS_BEST_VAL_ACCURACY),
                         metrics.get(keys.HEADS_BEST_TEST_ACCURACY),
                         metrics.get(keys.HEADS_SECONDS)])
    _, finetune = runs.latest(keys.FINETUNE_VAL_ACCURACY)
    if finetune:
        rows.append(["frozen base + augmentation (finetune phase 1)",
                     finetune.get(keys.phase_key("finetune", "phase1", "best_val_accuracy")),
                     None, finetune.get(keys.phase_key("finetune", "phase1", "seconds"))])
        rows.append(["block5 fine-tuned (finetune phase 2, final model)",
                     finetune.get(keys.FINETUNE_VAL_ACCURACY),
                     finetune.get(keys.FINETUNE_TEST_ACCURACY),
                     finetune.get(keys.FINETUNE_SECONDS)])
    if not rows:
        return "<p>No recipe has run yet.</p>"
    note = ""
    if extract:
        note = (f"<p>Cached features cost one pass of the backbone per image, once: "
                f"{_cell(extract.get('extract.images_per_second'))} images per second in the "
                f"latest extraction. Times are each stage's training time in seconds.</p>")
    return note + _table(["recipe", "validation accuracy", "test accuracy", "seconds"], rows)


STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
font-size:13px;text-align:left}th{background:#f3f3f3}img{max-width:100%}
figure{display:inline-block;margin:.5em}h2{border-bottom:2px solid #ddd}"""


def write_report(ctx: RunContext, path: Path) -> ReportResult:
    """Write the report of the context's pipeline to ``path`` (one HTML file)."""
    figures = [0]
    view, missing = _view(ctx)
    runs = _RunIndex(ctx.config.runs.dir)
    bodies = {
        "data": ("Data", _data_section(view, missing)),
        "extraction": ("Extraction", _extraction_section(runs)),
        "leaderboard": ("Heads leaderboard", _leaderboard_section(runs)),
        "curves": ("Training curves", _curves_section(runs, figures)),
        "confusion": ("Confusion matrices", _confusion_section(runs, figures)),
        "recipes": ("Recipes compared", _recipes_section(runs)),
    }
    sections = "".join(f'<section id="{key}"><h2>{title}</h2>{body}</section>'
                       for key, (title, body) in bodies.items())
    source = _escape(str(ctx.config.source or "stages.yaml"))
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Pipeline report</title><style>{STYLE}</style></head><body>"
            f"<h1>Pipeline report</h1><p>{source}</p>{sections}</body></html>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, page)
    return ReportResult(path, SECTIONS, figures[0])
