"""``pipeline report``: one self-contained HTML page of the pipeline's latest results.

It reads what the stages left (the dataset view, run folders' metrics, the probe table,
leaderboards, the best head's test answers, histories and confusion matrices; for each, the
newest run folder that has it) and the cached features the best head reads, and writes a
single file from a Jinja2 template (autoescaped), every figure and thumbnail inlined: no
network, no side files, and it opens nowhere by itself. It never builds a model and never
needs the backbone's weights. Sections: data, extraction, the probe, the leaderboard, the test
images the best head gets wrong, a map of the features, training curves (raw and smoothed
with an exponential moving average, as the reference recipe plots them), confusion matrices,
and the recipes compared by accuracy and time.
"""

from __future__ import annotations

import base64
import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cache import FeatureStore, MissingFeaturesError
from cache.files import write_atomic

from .. import metric_keys as keys
from ..backbone.spec import decode_options
from ..context import RunContext
from ..data.decode import decode_file
from ..data.names import display_path
from ..data.view import DatasetView
from ..errors import BackboneWeightsError, HeadLoadError, ImageDecodeError
from ..heads.leaderboard import format_score, leaderboard_table, read_leaderboard
from ..runs import list_runs
from . import figures

SECTIONS = ("data", "extraction", "probe", "leaderboard", "mistakes", "map", "curves",
            "confusion", "recipes")
GALLERY = 24          # mistakes shown at most, the surest first
LEADERBOARD_ROWS = 20  # trials shown at most, the best first (all are in leaderboard.csv)
MAP_POINTS = 3000     # images drawn at most on the feature map (a seeded sample beyond)
# per end-to-end stage: (its test accuracy, its validation accuracy)
_STAGE_ACCURACY = {"finetune": (keys.FINETUNE_TEST_ACCURACY, keys.FINETUNE_VAL_ACCURACY),
                   "scratch": (keys.SCRATCH_TEST_ACCURACY, keys.SCRATCH_VAL_ACCURACY)}


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

    def best_head(self) -> tuple[Path | None, str]:
        """The folder of the best head of the newest heads run, and its name."""
        run, metrics = self.latest(keys.HEADS_TRIALS)
        name = metrics.get(keys.HEADS_BEST_NAME)
        if run is None or not name:
            return None, ""
        return run / "heads" / str(name), str(name)


def cell(value) -> str:
    """A table cell: ``-`` for nothing, a score to 0.001 (also one read from a CSV)."""
    if value is None or value == "":
        return "-"
    if isinstance(value, str) and "." in value:
        try:
            value = float(value)
        except ValueError:
            pass
    return format_score(value) if isinstance(value, float) else str(value)


def _view(ctx: RunContext) -> tuple[DatasetView | None, str]:
    """The dataset view, or None and why there is none to show."""
    try:
        view = ctx.read_view()
    except BackboneWeightsError as exc:
        return None, f"The backbone's weights are missing, so the dataset view cannot be " \
                     f"found: {exc}"
    return view, "No dataset view yet: run pipeline run extract."


def _data(view: DatasetView) -> dict:
    counts = view.counts()
    splits = ("train", "validation", "test")
    rows = [[label, *(counts[s][label] for s in splits), sum(counts[s][label] for s in counts)]
            for label in view.classes]
    rows.append(["all", *(sum(counts[s].values()) for s in splits), len(view.images)])
    return {"counts": [[display_path(str(c)) for c in row] for row in rows],
            "skipped": [[display_path(s.path), s.reason] for s in view.skipped],
            "duplicates": [[g.kind, ", ".join(map(display_path, g.paths)),
                            ", ".join(map(display_path, g.classes)), ", ".join(g.splits)]
                           for g in view.duplicates],
            "leakage": sum(1 for g in view.duplicates if g.kind == "leakage")}


def _extraction(runs: _RunIndex) -> dict | None:
    run, metrics = runs.latest(keys.EXTRACT_IMAGES)
    if run is None:
        return None
    shown = [("images in the view", keys.EXTRACT_IMAGES), ("new", keys.EXTRACT_IMAGES_NEW),
             ("cached before", keys.EXTRACT_IMAGES_CACHED),
             ("skipped", keys.EXTRACT_IMAGES_SKIPPED),
             ("extraction loop, s", keys.EXTRACT_INFERENCE_SECONDS),
             ("images per second", keys.EXTRACT_IMAGES_PER_SECOND),
             ("whole stage, s", keys.EXTRACT_SECONDS),
             ("augmented copies new", keys.EXTRACT_AUGMENTED_COPIES_NEW),
             ("augmented copies cached", keys.EXTRACT_AUGMENTED_COPIES_CACHED),
             ("backbone fingerprint", keys.EXTRACT_FINGERPRINT)]
    # keys.read: runs of earlier releases have some of these under a former name
    return {"run": run.name, "rows": [[name, keys.read(metrics, key)] for name, key in shown]}


def _probe(runs: _RunIndex) -> dict | None:
    run, metrics = runs.latest(keys.PROBE_FEATURES)
    try:
        rows = json.loads((run / "probe.json").read_text(encoding="utf-8")) if run else []
    except (OSError, ValueError):
        rows = []
    if not rows:
        return None
    return {"run": run.name, "best": metrics.get(keys.PROBE_BEST_FEATURE),
            "chart": figures.probe_chart(rows),
            "rows": [[r["rank"], r["feature"], r["dimension"], r["val_accuracy"],
                      f"{float(r['C']):g}", r["fit_seconds"]] for r in rows]}


def _leaderboard(runs: _RunIndex) -> dict | None:
    """The newest heads run's leaderboard as the terminal shows it: a column per parameter
    that varies within a head, the others said once per head. Read from leaderboard.json,
    which keeps every parameter (the CSV leaves out those said once per head)."""
    run, metrics = runs.latest(keys.HEADS_TRIALS)
    if run is None:
        return None
    try:
        ranked = read_leaderboard(run / "leaderboard.json")
    except (OSError, ValueError):
        return None
    table = leaderboard_table(ranked, LEADERBOARD_ROWS)
    failed = any(table.errors)  # an error column only where a shown trial failed
    return {"run": run.name, "trials": metrics[keys.HEADS_TRIALS],
            "header": [*table.header, *(["error"] if failed else [])],
            "best": str(metrics.get(keys.HEADS_BEST_NAME)),
            "test_accuracy": metrics.get(keys.HEADS_BEST_TEST_ACCURACY),
            "rows": [[*row, *([error] if failed else [])]
                     for row, error in zip(table.rows, table.errors)],
            "constant": table.constant, "hidden": table.hidden}


def _thumbnail(ctx: RunContext, view: DatasetView | None, path: str) -> str | None:
    """The image as the backbone saw it (decoded and resized as the configuration says), small;
    None when there is no view or the file no longer decodes."""
    if view is None:
        return None
    try:
        return figures.thumbnail(decode_file(Path(view.root) / path, decode_options(ctx.config)))
    except ImageDecodeError:
        return None


def _mistakes(ctx: RunContext, runs: _RunIndex, view: DatasetView | None
              ) -> tuple[dict | None, str]:
    from ..heads.run import PREDICTIONS_NAME

    folder, name = runs.best_head()
    try:
        with open(folder / PREDICTIONS_NAME, encoding="utf-8") as fh:
            answers = list(csv.DictReader(fh))
    except (OSError, TypeError):
        return None, "No test answers of a best head yet: run pipeline run heads."
    wrong = [a for a in answers if a["class"] != a["predicted"]]
    wrong.sort(key=lambda a: -float(a["probability"] or 0))
    items = [{"path": a["path"], "truth": a["class"], "predicted": a["predicted"],
              "probability": a["probability"] or None,
              "thumbnail": _thumbnail(ctx, view, a["path"])} for a in wrong[:GALLERY]]
    return {"head": name, "total": len(answers), "wrong": len(wrong), "shown": len(items),
            "items": items}, ""


def _feature_map(ctx: RunContext, runs: _RunIndex, view: DatasetView | None
                 ) -> tuple[dict | None, str]:
    """The best head's input features of every image of the view, on two principal
    components."""
    folder, _ = runs.best_head()
    if folder is None or view is None:
        return None, "No map yet: it needs a dataset view and a trained head."
    from sklearn.decomposition import PCA

    from ..heads.features import FeatureRows
    from ..heads.saving import head_sources, read_head_metadata

    try:
        metadata = read_head_metadata(folder)
    except HeadLoadError as exc:
        return None, f"No map: {exc}"
    params = metadata.get("params", {})
    features = params.get("features", "flatten")
    images = view.images
    if len(images) > MAP_POINTS:
        images = images[np.sort(np.random.default_rng(0).choice(len(images), MAP_POINTS,
                                                                 replace=False))]
    shas = images.keys()
    try:
        x = {source: FeatureStore(ctx.config.cache.dir, fingerprint).get(shas)
             for source, fingerprint in head_sources(metadata).items()}
    except MissingFeaturesError as exc:
        return None, f"No map: {exc}"
    rows = FeatureRows(features, params.get("normalize", "none")).transform(x)
    if len(rows) < 3:
        return None, "No map: fewer than three images."
    points = PCA(n_components=2, random_state=0).fit_transform(rows.astype(np.float64))
    labels = images.label
    shown = ", ".join(features) if isinstance(features, list) else str(features)
    return {"features": shown, "points": len(images),
            "figure": figures.feature_map(points, labels, view.classes,
                                          f"the best head's features, {len(images)} images, "
                                          f"normalize: {params.get('normalize', 'none')}")}, ""


def _histories(runs: _RunIndex) -> list[tuple[str, dict]]:
    found = []
    run, _ = runs.latest(keys.HEADS_TRIALS)
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


def _confusion(runs: _RunIndex) -> list[tuple[str, str, str]]:
    candidates = []
    folder, name = runs.best_head()
    if folder is not None:
        candidates.append((f"best head {name}", folder))
    for stage in ("finetune", "scratch"):
        stage_run, _ = runs.latest(_STAGE_ACCURACY[stage][1])
        if stage_run is not None:
            candidates.append((stage, stage_run / stage))
    found = []
    for title, folder in candidates:
        for split in ("test", "validation"):
            png = folder / f"confusion_{split}.png"
            if png.is_file():
                found.append((title, split, base64.b64encode(png.read_bytes()).decode("ascii")))
                break
    return found


def _recipes(runs: _RunIndex) -> tuple[list[list], float | None]:
    rows = []
    _, scratch = runs.latest(keys.SCRATCH_VAL_ACCURACY)
    if scratch:
        rows.append(["CNN from scratch", scratch.get(keys.SCRATCH_VAL_ACCURACY),
                     scratch.get(keys.SCRATCH_TEST_ACCURACY),
                     scratch.get(keys.SCRATCH_SECONDS)])
    _, extract = runs.latest(keys.EXTRACT_IMAGES)
    _, plain = runs.newest(lambda m: keys.HEADS_TRIALS in m
                           and not keys.read(m, keys.HEADS_TRAIN_AUGMENTED_COPIES))
    _, copies = runs.newest(lambda m: bool(keys.read(m, keys.HEADS_TRAIN_AUGMENTED_COPIES)))
    for metrics, label in ((plain, "cached features"),
                           (copies, f"cached augmented copies "
                                    f"({keys.read(copies, keys.HEADS_TRAIN_AUGMENTED_COPIES)})")):
        if metrics:
            rows.append([f"{label} + {metrics.get(keys.HEADS_BEST_NAME)} head",
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
    return rows, extract.get(keys.EXTRACT_IMAGES_PER_SECOND) if extract else None


def _environment():
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.report", "."),
        autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    environment.filters["shown"] = lambda text: display_path(str(text))
    environment.filters["cell"] = cell
    return environment


def write_report(ctx: RunContext, path: Path) -> ReportResult:
    """Write the report of the context's pipeline to ``path`` (one HTML file)."""
    view, view_missing = _view(ctx)
    runs = _RunIndex(ctx.config.runs.dir)
    mistakes, mistakes_missing = _mistakes(ctx, runs, view)
    feature_map, map_missing = _feature_map(ctx, runs, view)
    recipes, images_per_second = _recipes(runs)
    probe = _probe(runs)
    curves = [(title, figures.curves(title, history)) for title, history in _histories(runs)]
    confusion = _confusion(runs)
    page = _environment().get_template("report.html.j2").render(
        source=str(ctx.config.source or "stages.yaml"), view=view, view_missing=view_missing,
        **(_data(view) if view is not None else {}),
        extraction=_extraction(runs), probe=probe, leaderboard=_leaderboard(runs),
        mistakes=mistakes, mistakes_missing=mistakes_missing,
        feature_map=feature_map, map_missing=map_missing, curves=curves,
        smoothing=figures.SMOOTHING, confusion=confusion, recipes=recipes,
        images_per_second=images_per_second)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, page)
    count = len(curves) + len(confusion) + (probe is not None) + (feature_map is not None)
    return ReportResult(path, SECTIONS, count)
