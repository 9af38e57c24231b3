"""Run stages in order inside one run folder, and save what each produced there."""

from __future__ import annotations

from .config import PipelineConfig
from .runs import RunFolder
from .views import write_skipped_csv, write_view_csv


def run_stages(config: PipelineConfig, stages: list[str],
               progress: bool = True) -> tuple[RunFolder, str]:
    """Run ``stages`` (now only ``extract``); returns the run folder and a printable report."""
    run = RunFolder.create(config, stages)
    reports = []
    if "extract" in stages:
        from .extract import run_extract
        result = run_extract(config, progress=progress)
        write_view_csv(result.view, run.path / "dataset.csv")
        write_skipped_csv(result.skipped, run.path / "skipped.csv")
        summary = result.summary()
        (run.path / "summary.txt").write_text(summary + "\n", encoding="utf-8")
        run.record(result.metrics())
        reports.append(summary)
    return run, "\n".join(reports)
