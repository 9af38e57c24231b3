"""Run stages in order inside one run folder, and save what each produced there."""

from __future__ import annotations

from datetime import datetime, timezone

from .config import PipelineConfig
from .runner import STAGE_ORDER, read_lock, record_stage, skipped_in_view, stage_state
from .runs import RunFolder
from .views import write_duplicates_csv, write_skipped_csv, write_view_csv


def run_stages(config: PipelineConfig, stages: list[str], progress: bool = True,
               use_lock: bool = False, force: frozenset[str] = frozenset()
               ) -> tuple[RunFolder, str]:
    """Run ``stages`` (extract, heads, finetune, scratch) in that order; returns the run
    folder and a report.

    With ``use_lock`` (``pipeline run``), each stage is first compared with ``pipeline.lock``:
    one whose inputs, parameters and outputs are unchanged is skipped and reported as up to
    date, unless it is in ``force``; each stage that runs is recorded in the lock when it
    succeeds. Without it every stage runs and the lock is neither read nor written.
    """
    if "heads" in stages and "extract" in stages:
        # Parameter names and values of every head, checked before an hour of extraction
        # (run_heads checks them again, first thing, when it runs alone).
        from .head_models import check_heads
        check_heads(config.stages.heads, config.source.name if config.source else "stages.yaml")
    if "finetune" in stages:
        from .finetune import check_finetune
        check_finetune(config)  # before an hour of extraction or sweeps, not after
    run = RunFolder.create(config, stages)
    reports: list[str] = []
    try:
        for stage in (s for s in STAGE_ORDER if s in stages):
            if use_lock and stage not in force:
                state = stage_state(config, stage, read_lock(config))
                if state.up_to_date:
                    reports.append(f"{stage}: up to date, skipped (inputs and parameters "
                                   f"unchanged; outputs in {state.run}; --force reruns it)")
                    run.record({f"{stage}.up_to_date_in": state.run})
                    if stage == "extract":
                        _carry_skipped(run, config, reports)
                    continue
            reports.append(_STAGES[stage](run, config, progress))
            if use_lock:
                record_stage(config, stage, run.path)
    except BaseException as exc:
        # The run folder says what happened, so a failed run is not mistaken for a finished one.
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else \
            f"failed: {type(exc).__name__}: {' '.join(str(exc).split())}"
        (run.path / "summary.txt").write_text("\n".join([*reports, reason]) + "\n",
                                              encoding="utf-8", errors="backslashreplace")
        raise
    (run.path / "summary.txt").write_text("\n".join(reports) + "\n", encoding="utf-8")
    # the mark of a run that finished: `pipeline runs` calls a folder without it unfinished
    run.record({"run.finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return run, "\n".join(reports)


def _carry_skipped(run: RunFolder, config: PipelineConfig, reports: list[str]) -> None:
    """An up-to-date extract still leaves out the files its view skipped: say so, and record
    the count, so that the exit code of this run says it too."""
    skipped = skipped_in_view(config)
    run.record({"extract.images_skipped": skipped})
    if skipped:
        reports.append(f"  {skipped} file(s) left out of the dataset view, as before "
                       f"(listed in that run's skipped.csv)")


def _extract_into(run: RunFolder, config: PipelineConfig, progress: bool) -> str:
    """Run the extract stage and save its view, skipped files, duplicates and metrics."""
    from .extract import run_extract
    result = run_extract(config, progress=progress)
    write_view_csv(result.view, run.path / "dataset.csv")
    write_skipped_csv(result.skipped, run.path / "skipped.csv")
    write_duplicates_csv(result.view, run.path / "duplicates.csv")
    summary = result.summary()
    (run.path / "summary.txt").write_text(summary + "\n", encoding="utf-8")
    run.record(result.metrics())
    return summary


def _heads_into(run: RunFolder, config: PipelineConfig, progress: bool) -> str:
    from .heads import run_heads
    return _record_stage(run, run_heads(config, run.path, progress=progress))


def _finetune_into(run: RunFolder, config: PipelineConfig, progress: bool) -> str:
    from .finetune import run_finetune
    return _record_stage(run, run_finetune(config, run.path, progress))


def _scratch_into(run: RunFolder, config: PipelineConfig, progress: bool) -> str:
    from .scratch import run_scratch
    return _record_stage(run, run_scratch(config, run.path, progress))


def _record_stage(run: RunFolder, result) -> str:
    """Record a stage result's ``metrics()`` and ``summary()`` in the run folder."""
    run.record(result.metrics())
    summary = result.summary()
    with open(run.path / "summary.txt", "a", encoding="utf-8") as fh:
        fh.write(summary + "\n")
    return summary


_STAGES = {"extract": _extract_into, "heads": _heads_into, "finetune": _finetune_into,
           "scratch": _scratch_into}
