"""Which stages a ``pipeline run`` needs, which are up to date, and ``pipeline status``.

Everything here is read off the stage declarations (:mod:`pipeline.stage`): a stage runs after
the stages it needs; it is up to date when its parameters and the value of every input equal
what ``pipeline.lock`` recorded after it last succeeded, and its outputs are still there. The
lock names what changed, so status can say it (for parameters: the key, old and new value).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config import NO_DEFAULT, current_key, key_default
from ..context import RunContext
from ..errors import BackboneWeightsError
from ..stage import Stage
from .lock import locked_stages, update_lock
from .registry import all_stages, stage_named


def plan(ctx: RunContext, targets: list[str]) -> list[Stage]:
    """``targets`` and every stage they need, in pipeline order (``all``: every stage)."""
    if "all" in targets:
        return list(all_stages())
    wanted: set[str] = set()
    pending = list(targets)
    while pending:
        name = pending.pop()
        if name not in wanted:
            wanted.add(name)
            pending.extend(stage_named(name).needs(ctx.config))
    return [stage for stage in all_stages() if stage.name in wanted]


@dataclass(frozen=True)
class StageState:
    """Whether a stage is up to date, and if not, why."""

    stage: str
    up_to_date: bool
    reasons: tuple[str, ...] = ()
    run: str = ""           # the run folder that holds its outputs (up to date only)


def _flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _param_changes(old: dict, new: dict) -> list[str]:
    # A lock written before a key was renamed records it under the old name: the same value.
    before = {current_key(key): value for key, value in _flatten(old).items()}
    after = _flatten(new)
    changes = []
    for key in sorted(set(before) | set(after)):
        # a key added since the lock was written, at the default that keeps what that
        # release did (backbone.flip_average: false), changes nothing
        default = key_default(key) if key not in before else NO_DEFAULT
        if default is not NO_DEFAULT and after[key] == default:
            continue
        if before.get(key, "<unset>") != after.get(key, "<unset>"):
            changes.append(f"parameter {key} changed ({before.get(key, '<unset>')} -> "
                           f"{after.get(key, '<unset>')})")
    return changes


def stage_state(ctx: RunContext, stage: Stage,
                locked: dict[str, dict[str, Any]] | None = None) -> StageState:
    """Compare ``stage``'s recorded parameters, inputs and outputs with the current ones.

    Inputs that cannot be known because the backbone's weights are missing (a command that
    may not download them) make the stage stale, with the reason, rather than an error.
    """
    locked = locked_stages(ctx.config) if locked is None else locked
    entry = locked.get(stage.name)
    if not entry:
        return StageState(stage.name, False, ("never run (no entry in pipeline.lock)",))
    reasons = _param_changes(entry.get("params", {}), stage.param_values(ctx.config))
    try:
        recorded = entry.get("deps", {})
        for dep in stage.deps:
            if dep.applies(ctx.config) and recorded.get(dep.name) != dep.value(ctx, locked):
                reasons.append(dep.changed)
        if not reasons:
            reasons += [why for why in (output.missing(ctx, entry) for output in stage.outputs)
                        if why]
    except BackboneWeightsError as exc:
        reasons.append(f"its inputs cannot be checked, the backbone weights are missing "
                       f"({' '.join(str(exc).split())})")
    return StageState(stage.name, not reasons, tuple(reasons),
                      "" if reasons else entry.get("run", ""))


def record_stage(ctx: RunContext, stage: Stage, run: Path | None) -> None:
    """Write ``stage``'s parameters, inputs and outputs into the lock (after it succeeded)."""

    def entry(locked: dict[str, dict[str, Any]]) -> dict[str, Any]:
        made = {"params": stage.param_values(ctx.config),
                "deps": stage.dependency_values(ctx, locked),
                "run": str(run) if run else "",
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        outs = {key: value for output in stage.outputs for key, value in output.record(ctx).items()}
        if outs:
            made["outs"] = outs
        return made

    update_lock(ctx.config, stage.name, entry)


def pipeline_status(ctx: RunContext) -> list[StageState]:
    """The state of every declared stage, in pipeline order; a stage that runs after a stale
    one is stale too (``depends on stale <names>``), as their new outputs may change its
    inputs. Reads only."""
    locked = locked_stages(ctx.config)
    states: list[StageState] = []
    stale: set[str] = set()
    for stage in all_stages():
        state = stage_state(ctx, stage, locked)
        upstream = [name for name in stage.needs(ctx.config) if name in stale]
        if upstream:
            state = StageState(stage.name, False,
                               (*state.reasons, f"depends on stale {', '.join(upstream)}"))
        if not state.up_to_date:
            stale.add(stage.name)
        states.append(state)
    return states


def format_status(states: list[StageState]) -> str:
    """One line per stage: up to date (and where its outputs are) or stale, and why."""
    lines = []
    for state in states:
        if state.up_to_date:
            where = f" (outputs in {state.run})" if state.run else ""
            lines.append(f"{state.stage}: up to date{where}")
        else:
            lines.append(f"{state.stage}: stale: {'; '.join(state.reasons)}")
    return "\n".join(lines)


def status_json(states: list[StageState]) -> dict[str, Any]:
    """``pipeline status --json``: ``{"format": 1, "up_to_date": bool, "stages": [{"stage",
    "up_to_date", "reasons": [str], "run": str | null}]}`` in pipeline order (``run``: the run
    folder holding an up-to-date stage's outputs)."""
    return {"format": 1, "up_to_date": all(s.up_to_date for s in states),
            "stages": [{"stage": s.stage, "up_to_date": s.up_to_date,
                        "reasons": list(s.reasons), "run": s.run or None} for s in states]}
