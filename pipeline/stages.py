"""Run stages in order inside one run folder, and save what each produced there."""

from __future__ import annotations

from .config import PipelineConfig
from .runs import RunFolder
from .views import write_duplicates_csv, write_skipped_csv, write_view_csv


def run_stages(config: PipelineConfig, stages: list[str],
               progress: bool = True) -> tuple[RunFolder, str]:
    """Run ``stages`` (extract, heads, finetune, scratch) in that order; returns the run
    folder and a report."""
    if "heads" in stages and "extract" in stages:
        # Parameter names and values of every head, checked before an hour of extraction
        # (run_heads checks them again, first thing, when it runs alone).
        from .head_models import check_heads
        check_heads(config.stages.heads, config.source.name if config.source else "stages.yaml")
    if "finetune" in stages:
        from .finetune import check_finetune
        check_finetune(config)  # before an hour of extraction or sweeps, not after
    run = RunFolder.create(config, stages)
    reports = []
    try:
        if "extract" in stages:
            reports.append(_extract_into(run, config, progress))
        if "heads" in stages:
            from .heads import run_heads
            reports.append(_record_stage(run, run_heads(config, run.path, progress=progress)))
        if "finetune" in stages:
            from .finetune import run_finetune
            reports.append(_record_stage(run, run_finetune(config, run.path, progress)))
        if "scratch" in stages:
            from .scratch import run_scratch
            reports.append(_record_stage(run, run_scratch(config, run.path, progress)))
    except BaseException as exc:
        # The run folder says what happened, so a failed run is not mistaken for a finished one.
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else \
            f"failed: {type(exc).__name__}: {' '.join(str(exc).split())}"
        (run.path / "summary.txt").write_text("\n".join([*reports, reason]) + "\n",
                                              encoding="utf-8")
        raise
    return run, "\n".join(reports)


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


def _record_stage(run: RunFolder, result) -> str:
    """Record a stage result's ``metrics()`` and ``summary()`` in the run folder."""
    run.record(result.metrics())
    summary = result.summary()
    with open(run.path / "summary.txt", "a", encoding="utf-8") as fh:
        fh.write(summary + "\n")
    return summary
