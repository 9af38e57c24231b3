"""How a stage is declared: its name, what it needs, reads and writes, and how it runs.

As in DVC, a :class:`Stage` declares its parameters (keys of stages.yaml), its dependencies
(each a :class:`Dependency` whose current value is compared with what ``pipeline.lock``
recorded) and its outputs (each an :class:`Output` that says whether what the lock recorded is
still there). The runner plans, skips, runs and records stages, and ``pipeline status``
explains them, from these declarations alone; the CLI lists them. A stage is one module that
declares itself this way and one line in :mod:`pipeline.runner.registry`.

Declarations are cheap to import: a stage's ``run`` imports its implementation when called,
so ``pipeline status`` never imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cache.files import sha256_file

from .config import PipelineConfig
from .context import RunContext
from .data.view import view_digest


class StageResult(Protocol):
    """What a stage's ``run`` returns."""

    def metrics(self) -> dict[str, float | int | str]:
        """Flat ``<stage>.*`` keys for the run's metrics.json."""

    def summary(self) -> str:
        """What the run prints about the stage."""


@dataclass(frozen=True)
class StageReport:
    """A result made of its parts (what an up-to-date stage reports, say)."""

    lines: tuple[str, ...] = ()
    values: dict[str, float | int | str] = field(default_factory=dict)

    def metrics(self) -> dict[str, float | int | str]:
        """The metrics."""
        return dict(self.values)

    def summary(self) -> str:
        """The lines."""
        return "\n".join(self.lines)


#: The stages of pipeline.lock, by name: {stage: {"params", "deps", "run", ...}}.
LockedStages = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Dependency:
    """An input of a stage: ``value(ctx, locked)`` is its current value (JSON-able; compared
    with the one the lock recorded under ``name``), ``changed`` what status says when it
    differs. ``applies(config)`` False leaves it out of the stage's inputs."""

    name: str
    changed: str
    value: Callable[[RunContext, LockedStages], Any]
    applies: Callable[[PipelineConfig], bool] = lambda config: True


@dataclass(frozen=True)
class Output:
    """What a stage leaves behind: ``record(ctx)`` the values the lock keeps under ``outs``
    after a run ({} for none), ``missing(ctx, entry)`` why what the lock's ``entry`` recorded is
    no longer there (None while it is)."""

    missing: Callable[[RunContext, dict[str, Any]], str | None]
    record: Callable[[RunContext], dict[str, Any]] = lambda ctx: {}


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline.

    ``run(ctx, folder, progress)`` does the work (``folder`` is the run folder) and returns a
    :class:`StageResult`; ``needs(config)`` names the stages that must have run first;
    ``params`` are the dotted stages.yaml keys it reads; ``check(ctx)`` validates, before any
    stage of the run starts, what only the whole configuration can tell; ``when_up_to_date``
    says what a run that skips the stage still reports (given the stage's entry in the lock).
    """

    name: str
    help: str
    run: Callable[[RunContext, Path, bool], StageResult]
    params: tuple[str, ...]
    deps: tuple[Dependency, ...] = ()
    outputs: tuple[Output, ...] = ()
    needs: Callable[[PipelineConfig], tuple[str, ...]] = lambda config: ()
    check: Callable[[RunContext], None] = lambda ctx: None
    when_up_to_date: Callable[[RunContext, dict[str, Any]], StageResult] = \
        lambda ctx, entry: StageReport()

    def param_values(self, config: PipelineConfig) -> dict[str, Any]:
        """The values of :attr:`params` in ``config``, as plain data (what the lock keeps)."""
        document = config.to_yaml_dict()
        values = {}
        for key in self.params:
            node = document
            for part in key.split("."):
                node = node[part]
            values[key] = node
        return values

    def dependency_values(self, ctx: RunContext, locked: LockedStages) -> dict[str, Any]:
        """The current value of each input that applies."""
        return {dep.name: dep.value(ctx, locked) for dep in self.deps
                if dep.applies(ctx.config)}


def _data_listing(ctx: RunContext, locked: LockedStages) -> dict:
    """Every file under ``data.root``: count and a hash of (path, size, mtime), read cheaply
    (no file is opened) from the command's one walk of the folder, which extract's scan uses
    too: the lock records the listing the stage saw before it ran, so a file added while it
    ran makes the next status stale."""
    return ctx.data_listing().summary


def _labels_table(ctx: RunContext, locked: LockedStages) -> str:
    """The sha256 of the labels table (``data.labels``), wherever it lives. Its content, not
    its mtime: relabelling a row keeps the size, and an edit within the timestamp's resolution
    would go unseen; one table costs little to read."""
    try:
        return sha256_file(ctx.config.data.labels)
    except OSError as exc:  # gone since the configuration was read: changed, certainly
        return f"unreadable: {exc.strerror or type(exc).__name__}"


def dataset_view_hash(ctx: RunContext) -> str | None:
    """The identity of the dataset view's content (its write time left out), or None when
    there is none; from the digest extract recorded beside it, without reading the view."""
    return view_digest(ctx.view_file)


DATA_FOLDER = Dependency("data", "data folder changed (files added, removed or modified)",
                         _data_listing)
# Its own input, so that status names it, and absent from the folder layouts' locks.
LABELS_TABLE = Dependency("labels", "labels table changed (data.labels)", _labels_table,
                          applies=lambda config: config.data.labels is not None)
BACKBONE = Dependency("backbone", "backbone fingerprint changed",
                      lambda ctx, locked: ctx.fingerprint.id)
DATASET_VIEW = Dependency("dataset_view", "dataset view changed (extract found other images)",
                          lambda ctx, locked: dataset_view_hash(ctx))


def run_file(relative: str) -> Output:
    """An output that is the file ``relative`` in the stage's run folder."""

    def missing(ctx: RunContext, entry: dict[str, Any]) -> str | None:
        wanted = Path(entry.get("run", "")) / relative
        return None if wanted.is_file() else f"outputs missing (expected {wanted})"

    return Output(missing=missing)
