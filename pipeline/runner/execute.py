"""Run planned stages in one run folder, skip those that are up to date, record the rest.

The run folder's ``summary.txt`` is written here and only here, after each stage, so it holds
what the run printed so far; a run that stops early ends it with ``interrupted`` or
``failed: <error>``, and ``pipeline runs`` reads that.
"""

from __future__ import annotations

from datetime import datetime, timezone

from .. import metric_keys
from ..context import RunContext
from ..nn.backend import check_backend
from ..runs import FAILED_PREFIX, INTERRUPTED, RunFolder
from ..stage import Stage
from .lock import locked_stages
from .plan import record_stage, stage_state


def run_stages(ctx: RunContext, stages: list[Stage], progress: bool = True,
               use_lock: bool = False, force: frozenset[str] = frozenset()
               ) -> tuple[RunFolder, str]:
    """Run ``stages`` (planned: in pipeline order, needs first); returns the run folder and a
    report.

    The Keras backend (``KERAS_BACKEND``) and every stage's ``check`` are checked first,
    before an hour of extraction. With ``use_lock``
    (``pipeline run``), each stage is first compared with ``pipeline.lock``: one whose inputs,
    parameters and outputs are unchanged is skipped and reported as up to date, unless it is
    in ``force``; each stage that runs is recorded in the lock when it succeeds. Without it
    every stage runs and the lock is neither read nor written.
    """
    check_backend()
    for stage in stages:
        stage.check(ctx)
    run = RunFolder.create(ctx.config, [stage.name for stage in stages])
    reports: list[str] = []
    try:
        for stage in stages:
            if use_lock and stage.name not in force:
                state = stage_state(ctx, stage)
                if state.up_to_date:
                    reports.append(f"{stage.name}: up to date, skipped (inputs and parameters "
                                   f"unchanged; outputs in {state.run}; --force reruns it)")
                    run.record({metric_keys.up_to_date_in(stage.name): state.run})
                    entry = locked_stages(ctx.config).get(stage.name, {})
                    _report(run, stage.when_up_to_date(ctx, entry), reports)
                    continue
            _report(run, stage.run(ctx, run.path, progress), reports)
            if use_lock:
                record_stage(ctx, stage, run.path)
    except BaseException as exc:
        # The run folder says what happened, so a failed run is not mistaken for a finished one.
        reason = INTERRUPTED if isinstance(exc, KeyboardInterrupt) else \
            f"{FAILED_PREFIX}{type(exc).__name__}: {' '.join(str(exc).split())}"
        run.write_summary([*reports, reason])
        raise
    # the mark of a run that finished: `pipeline runs` calls a folder without it unfinished
    run.record({metric_keys.RUN_FINISHED: datetime.now(timezone.utc).isoformat(
        timespec="seconds")})
    return run, "\n".join(reports)


def run_targets(ctx: RunContext, targets: list[str], force: bool = False,
                progress: bool = True) -> tuple[RunFolder, str]:
    """``pipeline run TARGETS``: the named stages (``all``: every stage) and the stages they
    need, in pipeline order, against pipeline.lock; with ``force`` the named ones run even
    when up to date (every one for ``all``). Returns the run folder and the report."""
    from .plan import plan

    targets = list(dict.fromkeys(targets))
    order = plan(ctx, targets)
    forced = {stage.name for stage in order} if "all" in targets else set(targets)
    return run_stages(ctx, order, progress=progress, use_lock=True,
                      force=frozenset(forced if force else ()))


def _report(run: RunFolder, result, reports: list[str]) -> None:
    """Record ``result``'s metrics and add its summary to the run's summary.txt."""
    run.record(result.metrics())
    summary = result.summary()
    if summary:
        reports.append(summary)
    run.write_summary(reports)
