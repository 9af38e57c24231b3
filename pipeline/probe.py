"""The probe stage: which layer transfers to my data, after one extraction, in seconds.

For every part the cache keeps (each tap, and flatten, gap and gmp of the output
tensor) it fits a logistic regression on the training split, normalised as ``stages.probe``
says (power: signed square root, then unit length), for each C of a small grid, and keeps the
C that scores best on validation. The table (part, dimension, validation accuracy, chosen C,
fit seconds) is printed and saved as ``probe.csv`` and ``probe.json``; the report draws it.
Nothing is decoded and no convnet runs: it reads the cache, like the heads stage.

This module is a whole stage: its declaration (``STAGE``) and its work, with scikit-learn
imported only when it runs.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cache.files import write_atomic

from . import metric_keys as keys
from .config import OUTPUT
from .config.heads import OUTPUT_PARTS
from .context import RunContext
from .stage import DATASET_VIEW, Stage, run_file

PROBE_COLUMNS = ("rank", "feature", "dimension", "val_accuracy", "C", "fit_seconds")


@dataclass
class ProbeRow:
    """One part's probe: its width, its best validation accuracy, the C that gave it, and the
    seconds all its fits took."""

    feature: str
    dimension: int
    val_accuracy: float
    C: float
    fit_seconds: float
    rank: int = 0


@dataclass
class ProbeResult:
    """What one probe run found, best first."""

    rows: list[ProbeRow]
    normalize: str
    train_images: int
    validation_images: int
    seconds: float

    def metrics(self) -> dict[str, float | int | str]:
        """Flat ``probe.*`` keys for metrics.json."""
        best = self.rows[0]
        return {keys.PROBE_FEATURES: len(self.rows), keys.PROBE_BEST_FEATURE: best.feature,
                keys.PROBE_BEST_VAL_ACCURACY: best.val_accuracy,
                keys.PROBE_SECONDS: round(self.seconds, 3)}

    def summary(self) -> str:
        """The table, best first."""
        lines = [f"probe: a logistic regression per cached part ({self.normalize} "
                 f"normalisation, C on validation), {self.train_images} train / "
                 f"{self.validation_images} validation images, in {self.seconds:.1f} s",
                 f"{'rank':>4}  {'feature':<18} {'dim':>6}  {'val_acc':>7}  {'C':>7}  "
                 f"{'fit_s':>6}"]
        for row in self.rows:
            lines.append(f"{row.rank:>4}  {row.feature:<18} {row.dimension:>6}  "
                         f"{row.val_accuracy:>7.4f}  {row.C:>7.3g}  {row.fit_seconds:>6.2f}")
        return "\n".join(lines)


def probe_parts(ctx: RunContext) -> list[str]:
    """What is probed: each tap, then flatten, gap and gmp of the output tensor when it is
    kept."""
    output_parts = list(OUTPUT_PARTS) if OUTPUT in ctx.stores else []
    return [*ctx.spec.taps, *output_parts]


def run_probe(ctx: RunContext, folder: Path) -> ProbeResult:
    """Probe every cached part of the dataset view; write ``probe.csv`` and ``probe.json`` into
    ``folder`` (the run folder)."""
    from sklearn.linear_model import LogisticRegression

    from .heads.features import FeatureRows, source_of
    from .heads.splits import load_split

    started = time.perf_counter()
    params = ctx.config.stages.probe
    parts = probe_parts(ctx)
    sources = list(dict.fromkeys(source_of(part) for part in parts))
    view = ctx.require_view(tuple(sources))
    view.check_trainable("the probe picks each part's C on validation")
    stores = {source: ctx.stores[source] for source in sources}
    train, validation = (load_split(stores, view, split) for split in ("train", "validation"))
    rows = []
    for part in parts:
        features = FeatureRows(part, params.normalize)
        x_train, x_val = features.transform(train.x), features.transform(validation.x)
        fit_started = time.perf_counter()
        best = (-1.0, 0.0)
        # newton-cg: on unit-norm parts the useful C are large, where lbfgs needs hundreds of
        # iterations and newton-cg about ten (measured: 5.5 s against 0.08 s for one fit of
        # block3_conv3.gap on flowers-1000). Along the rising C each fit starts from the last
        # solution. A tie keeps the smaller, more regularised C.
        model = LogisticRegression(solver="newton-cg", max_iter=params.max_iter,
                                   warm_start=True)
        for c in sorted(params.C):
            model.set_params(C=c).fit(x_train, train.y)
            accuracy = float((model.predict(x_val) == validation.y).mean())
            if accuracy > best[0]:
                best = (accuracy, c)
        rows.append(ProbeRow(part, x_train.shape[1], best[0], best[1],
                             time.perf_counter() - fit_started))
    rows.sort(key=lambda row: -row.val_accuracy)  # stable: ties keep the order probed
    for rank, row in enumerate(rows, start=1):
        row.rank = rank
    _write(rows, folder)
    return ProbeResult(rows, params.normalize, len(train), len(validation),
                       time.perf_counter() - started)


def _write(rows: list[ProbeRow], folder: Path) -> None:
    table = [{column: asdict(row)[column] for column in PROBE_COLUMNS} for row in rows]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PROBE_COLUMNS)
    writer.writeheader()
    writer.writerows(table)
    write_atomic(folder / "probe.csv", buffer.getvalue())
    write_atomic(folder / "probe.json", json.dumps(table, indent=2) + "\n")


STAGE = Stage(
    name="probe",
    help="fits a logistic regression on each tap and on flatten, gap and gmp of the output "
         "tensor, C picked on validation, and prints which part transfers best (probe.csv). "
         "It reads the cache only.",
    run=lambda ctx, folder, progress: run_probe(ctx, folder),
    params=("backbone.taps", "backbone.keep_output", "stages.probe"),
    deps=(DATASET_VIEW,),
    outputs=(run_file("probe.csv"),),
    needs=lambda config: ("extract",),
)
