"""The heads stage, declared: it needs extract, reads the dataset view and ``stages.heads``,
and leaves a leaderboard and one folder per head. The work is :func:`pipeline.heads.run`."""

from __future__ import annotations

from pathlib import Path

from ..config import check_heads_read_what_is_cached
from ..context import RunContext
from ..stage import DATASET_VIEW, Stage, run_file


def _run(ctx: RunContext, folder: Path, progress: bool):
    from .run import run_heads
    return run_heads(ctx, folder, progress=progress)


def _check(ctx: RunContext) -> None:
    """Parameter names and values of every head, checked before an hour of extraction."""
    from .registry import check_heads
    check_heads_read_what_is_cached(ctx.config)
    check_heads(ctx.config.stages.heads, ctx.config.source_name)


STAGE = Stage(
    name="heads",
    help="trains the heads of stages.heads on the cached features (sweeps run in parallel "
         "on dask), ranks every trial on the validation split, then tests the best head "
         "once. It never decodes an image.",
    run=_run,
    params=("stages.heads",),
    deps=(DATASET_VIEW,),
    outputs=(run_file("leaderboard.csv"),),
    needs=lambda config: ("extract",),
    check=_check,
)
