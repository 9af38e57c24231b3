"""``pipeline report``: one self-contained HTML file with every section and inlined figures,
checked as text here and, where Chromium and Playwright are installed, in a real browser."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.report import SECTIONS, smooth, write_report
from tests.support.projects import run_named, split_project


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    """extract + heads + finetune + scratch (1 epoch each), then the report's path and text."""
    project = split_project(tmp_path_factory.mktemp("report"))
    config = load_config(project / "stages.yaml")
    run, _ = run_named(config, "extract", "heads", "finetune", "scratch")
    result = write_report(RunContext(config), project / "report.html")
    return result.path, result.path.read_text(encoding="utf-8"), run.path


def test_every_metric_a_run_of_every_stage_writes_is_a_documented_key(report):
    import json

    from pipeline import metric_keys
    documented = [re.compile(re.escape(key).replace(re.escape("<name>"), r"[\w-]+")
                             .replace(re.escape("<phase>"), r"phase\d")
                             .replace(re.escape("<stage>"), r"\w+") + "$")
                  for key in metric_keys.DOCUMENTED]
    _, _, run = report
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics) > 40
    assert [key for key in metrics if not any(p.match(key) for p in documented)] == []


def test_smoothing_is_an_exponential_moving_average():
    assert smooth([1.0, 0.0, 0.0]) == pytest.approx([1.0, 0.8, 0.64])
    assert smooth([]) == []


def test_the_report_has_every_section_and_inlines_every_figure(report):
    path, page, _ = report
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    assert "cats" in page and "dogs" in page  # images per class
    assert "Skipped files (0)" in page and "Duplicates (0 groups" in page
    assert "images per second" in page
    assert "dense" in page and "val_accuracy" in page  # leaderboard
    for title in ("dense head dense", "finetune phase1", "finetune phase2", "scratch train"):
        assert f'alt="{title} curves"' in page
    assert all(f'alt="{t} on test"' in page for t in ("best head dense", "finetune", "scratch"))
    for recipe in ("CNN from scratch", "cached features + dense head",
                   "frozen base + augmentation", "block5 fine-tuned"):
        assert recipe in page
    # self-contained: no file, http or relative references, every image a data URI
    sources = re.findall(r'src="([^"]+)"', page)
    assert len(sources) == 7 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_the_cli_writes_the_report_into_the_runs_folder(tmp_path: Path, capsys):
    project = split_project(tmp_path)
    assert main(["report", "-c", str(project / "stages.yaml")]) == 0
    out = capsys.readouterr().out
    assert "report: " in out and (project / "runs" / "report.html").is_file()
    page = (project / "runs" / "report.html").read_text()
    assert "No dataset view yet" in page and "No recipe has run yet" in page


def test_the_report_renders_in_headless_chromium(report):
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser") or \
        shutil.which("google-chrome")
    playwright = pytest.importorskip("playwright.sync_api")
    if browser_path is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    path, _, _ = report
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            images, loaded, sections = page.evaluate(
                "() => [document.images.length,"
                " Array.from(document.images).every(i => i.complete && i.naturalWidth > 0),"
                " Array.from(document.querySelectorAll('section')).map(s => s.id)]")
        finally:
            browser.close()
    assert images == 7 and loaded
    assert sections == list(SECTIONS)
