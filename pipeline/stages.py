"""Run stages in order inside one run folder, and save what each produced there."""

from __future__ import annotations

from .config import PipelineConfig
from .runs import RunFolder
from .views import write_duplicates_csv, write_skipped_csv, write_view_csv


def run_stages(config: PipelineConfig, stages: list[str],
               progress: bool = True) -> tuple[RunFolder, str]:
    """Run ``stages`` (now only ``extract``); returns the run folder and a printable report."""
    run = RunFolder.create(config, stages)
    reports = []
    try:
        if "extract" in stages:
            reports.append(_extract_into(run, config, progress))
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
