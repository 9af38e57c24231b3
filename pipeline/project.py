"""The Python API: one stages.yaml as an object, calling the same code as the ``pipeline``
command.

    from pipeline import Project

    project = Project("stages.yaml")
    project.extract()                                  # pipeline run extract
    table = project.dataset()                          # path, sha256, label, split
    X, y = project.features("train", parts=["block4_conv3.gap"], normalize="power")
    project.heads()                                    # pipeline run heads
    for prediction in project.predict(["new.jpg"]):    # pipeline predict
        print(prediction.path, prediction.top)

The configuration is read and validated once, when the object is made. Reading features and
the dataset table imports no TensorFlow; only extraction, a dense head and images that are
not in the cache do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from .config import PipelineConfig, load_config
from .context import RunContext
from .data.view import DatasetView
from .export import SplitReader, export_features
from .heads.features import source_of
from .predict import Prediction, image_files, newest_best_head, predict_with_head
from .runner.plan import StageState, pipeline_status

#: The columns of :meth:`Project.dataset`, in order.
DATASET_COLUMNS = ("path", "sha256", "label", "split")


@dataclass(frozen=True)
class RunOutcome:
    """What a run of stages left: its folder under ``runs.dir``, its flat metrics (the keys of
    ``metrics.json``) and the report the command prints."""

    path: Path
    metrics: dict[str, float | int | str]
    report: str


class Project:
    """A pipeline project: one stages.yaml, the cache and the runs it points at.

    ``config`` is the path of the stages.yaml; ``overrides`` are ``key.sub=value`` strings,
    as ``--set`` takes them. Raises :class:`~pipeline.errors.ConfigError` for a file that is
    not a valid configuration, before anything else happens.
    """

    def __init__(self, config: str | os.PathLike = "stages.yaml", *,
                 overrides: Sequence[str] = ()):
        self.config: PipelineConfig = load_config(Path(config), list(overrides))

    def __repr__(self) -> str:
        return f"Project({str(self.config.source)!r})"

    @cached_property
    def context(self) -> RunContext:
        """What the commands resolve once: backbone spec, fingerprints, stores, dataset view."""
        return RunContext(self.config)

    # -- running -----------------------------------------------------------------------------

    def run(self, *stages: str, force: bool = False, progress: bool = False) -> RunOutcome:
        """``pipeline run STAGES``: the stages and what they need, skipping those that are up
        to date (unless ``force``), recorded in pipeline.lock; a new run folder either way."""
        from .runner.execute import run_targets
        from .runner.registry import unknown_stages

        problem = unknown_stages(stages)
        if problem:
            raise ValueError(problem)
        try:
            folder, report = run_targets(self.context, list(stages), force=force,
                                         progress=progress)
        finally:
            # a run may have written a new dataset view, and its listing of the data folder
            # (the files' stats the scan trusts) is that moment's: both afresh next time,
            # also after a run that failed
            self.__dict__.pop("context", None)
        return RunOutcome(folder.path, dict(folder.metrics), report)

    def extract(self, *, force: bool = False, progress: bool = False) -> RunOutcome:
        """``pipeline run extract``: cache the features of every image that lacks them."""
        return self.run("extract", force=force, progress=progress)

    def heads(self, *, force: bool = False, progress: bool = False) -> RunOutcome:
        """``pipeline run heads`` (extracting first where needed): train, sweep, select on
        validation, test the best."""
        return self.run("heads", force=force, progress=progress)

    def status(self) -> dict[str, StageState]:
        """``pipeline status``: each stage's :class:`~pipeline.runner.plan.StageState` by name,
        in pipeline order (``up_to_date``, and the ``reasons`` when it is not). Reads only."""
        return {state.stage: state
                for state in pipeline_status(RunContext(self.config, allow_download=False))}

    # -- reading -----------------------------------------------------------------------------

    def _view(self, parts: Sequence[str] = ()) -> DatasetView:
        sources = tuple(dict.fromkeys(source_of(part) for part in parts))
        return self.context.require_view(sources)

    @property
    def classes(self) -> list[str]:
        """The class names, in the order of the class indices ``y`` holds."""
        return list(self._view().classes)

    def dataset(self):
        """The dataset view as a pandas DataFrame: one row per image with cached features,
        columns ``path`` (relative to ``data.root``), ``sha256``, ``label`` and ``split``
        (train, validation or test), in the view's order. Needs ``pipeline run extract``
        first (:class:`~pipeline.errors.MissingViewError` otherwise)."""
        import pandas as pd

        images = self._view().images
        return pd.DataFrame(dict(zip(DATASET_COLUMNS, (
            images.path.tolist(), images.keys(), images.label_names(),
            images.split_names()))))

    def features(self, split: str = "train", parts: str | Sequence[str] | None = None,
                 normalize: str = "none") -> tuple[np.ndarray, np.ndarray]:
        """The cached features of one split as ``(X, y)``.

        ``X`` is (N, d) float32: each of ``parts`` (``flatten``, ``gap`` or ``gmp`` of the
        output tensor, or a tap of ``backbone.taps``; default: every tap, or ``flatten`` when
        there is none) normalised by ``normalize`` (``none``, ``l2`` or ``power``) and put side
        by side, as a head reads them; ``y`` is (N,) int64 class indices into
        :attr:`classes`. Rows follow :meth:`dataset`'s order for that split. Reads the cache
        only: no image is decoded and TensorFlow is not imported.
        """
        return SplitReader.of(self.context, split, parts, normalize).read()

    def export(self, path: str | os.PathLike, split: str = "train",
               parts: str | Sequence[str] | None = None, normalize: str = "none"):
        """``pipeline export``: :meth:`features` of ``split`` with path, sha256 and label,
        written to ``path`` (``.parquet`` or ``.npz``) a chunk of rows at a time; returns an
        :class:`~pipeline.export.ExportResult` (file, rows, width)."""
        return export_features(self.context, split, Path(path), parts, normalize)

    # -- predicting --------------------------------------------------------------------------

    def predict(self, paths: Sequence[str | os.PathLike], head: str | os.PathLike | None = None,
                top_k: int = 3) -> list[Prediction]:
        """``pipeline predict``: the ``top_k`` classes of each image file (folders are
        searched for images), from the saved head in ``head`` (a ``runs/<run>/heads/<name>``
        folder; default: the best head of the newest heads run). An image already in the cache
        is classified from its cached features; the others go through the backbone. A file
        that cannot be read has its ``error`` set instead of classes."""
        files = image_files([Path(path) for path in paths])
        folder = Path(head) if head is not None else newest_best_head(self.config.runs.dir)
        return predict_with_head(self.context, folder, files, top_k)


__all__ = ["DATASET_COLUMNS", "Project", "RunOutcome"]
