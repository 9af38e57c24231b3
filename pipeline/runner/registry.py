"""The stages of the pipeline, in pipeline order: one line each.

Adding a stage is a module that declares a :class:`~pipeline.stage.Stage` and one line here;
the runner, ``pipeline run``, ``pipeline status`` and the CLI's list of stages read this tuple.
"""

from __future__ import annotations

import difflib

from ..endtoend.stages import FINETUNE, SCRATCH
from ..extract.stage import STAGE as EXTRACT
from ..heads.stage import STAGE as HEADS
from ..probe import STAGE as PROBE
from ..stage import Stage

STAGES: tuple[Stage, ...] = (
    EXTRACT,
    PROBE,
    HEADS,
    FINETUNE,
    SCRATCH,
)


def all_stages() -> tuple[Stage, ...]:
    """Every declared stage, in pipeline order (read when called: tests may add one)."""
    return STAGES


def stage_names() -> tuple[str, ...]:
    """The names ``pipeline run`` accepts (besides ``all``), in pipeline order."""
    return tuple(stage.name for stage in all_stages())


def unknown_stages(names: list[str] | tuple[str, ...]) -> str | None:
    """Why ``names`` cannot be run (a name that is no stage, or none given), or None."""
    unknown = [name for name in names if name not in (*stage_names(), "all")]
    if names and not unknown:
        return None
    known = (*stage_names(), "all")
    close = [match for name in unknown for match in difflib.get_close_matches(name, known, n=1)]
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return (f"unknown stage {', '.join(unknown) or '(none given)'}{hint}; stages: "
            f"{', '.join(stage_names())}, or all")


def stage_named(name: str) -> Stage:
    """The stage called ``name`` (KeyError when there is none)."""
    for stage in all_stages():
        if stage.name == name:
            return stage
    raise KeyError(name)
