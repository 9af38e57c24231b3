"""The end-to-end stages, declared: finetune and scratch need extract (finetune also heads,
when it starts from their newest dense head), read the dataset view and their section, and
leave a saved model. The work is in :mod:`~pipeline.endtoend.finetune` and
:mod:`~pipeline.endtoend.scratch`."""

from __future__ import annotations

from pathlib import Path

from ..config import PipelineConfig
from ..context import RunContext
from ..errors import ConfigError
from ..stage import DATASET_VIEW, Dependency, LockedStages, Stage, run_file


def check_finetune(config: PipelineConfig) -> None:
    """Settings of the finetune stage that only make sense with the rest of the config:
    :class:`ConfigError` before any work starts."""
    problem = config.stages.finetune.unfreeze_problem(config.backbone.output_layer)
    if problem:
        raise ConfigError(f"{config.source_name}: stages.finetune.unfreeze: {problem}")


def _run_finetune(ctx: RunContext, folder: Path, progress: bool):
    from .finetune import run_finetune
    return run_finetune(ctx, folder, progress)


def _run_scratch(ctx: RunContext, folder: Path, progress: bool):
    from .scratch import run_scratch
    return run_scratch(ctx, folder, progress)


def _warm_start_head(ctx: RunContext, locked: LockedStages) -> str | None:
    head = ctx.config.stages.finetune.head_from
    if head == "auto":  # the heads stage's last outputs
        head = (locked.get("heads") or {}).get("run")
    return head and str(head)


WARM_START_HEAD = Dependency("warm_start_head", "warm-start head changed (heads ran again)",
                             _warm_start_head,
                             applies=lambda config: config.stages.finetune.head_from is not None)

FINETUNE = Stage(
    name="finetune",
    help="trains end to end through the frozen VGG16 base with augmentation, starting from "
         "the newest dense head of `heads`, then opens block5 at a lower learning rate; "
         "tests the final model (slow on a CPU).",
    run=_run_finetune,
    params=("stages.finetune",),
    deps=(DATASET_VIEW, WARM_START_HEAD),
    outputs=(run_file("finetune/model.keras"),),
    needs=lambda config: ("extract", "heads") if config.stages.finetune.head_from == "auto"
    else ("extract",),
    check=lambda ctx: check_finetune(ctx.config),
)

SCRATCH = Stage(
    name="scratch",
    help="trains the reference recipe's small CNN from scratch on the same splits, as a "
         "baseline.",
    run=_run_scratch,
    params=("stages.scratch",),
    deps=(DATASET_VIEW,),
    outputs=(run_file("scratch/model.keras"),),
    needs=lambda config: ("extract",),
)
