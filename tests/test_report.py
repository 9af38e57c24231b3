"""``pipeline report``: one self-contained HTML file with every section and inlined figures,
checked as text here and, where Chromium and Playwright are installed, in a real browser."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.heads.run import PREDICTIONS_NAME
from pipeline.report import SECTIONS, smooth, write_report
from tests.support.projects import run_named, split_project, write_config

TAPS = ["block1_conv2.gap", "block2_pool.gmp"]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str, Path]:
    """extract (with two taps) + probe + heads (a dense head on the output, a logistic
    regression on the taps) + finetune + scratch (1 epoch each); the report's path, its text
    and the run folder."""
    project = split_project(tmp_path_factory.mktemp("report"), heads={"models": {
        "dense": {"kind": "dense", "params": {"epochs": 2}},
        "taps": {"kind": "logistic_regression", "features": TAPS, "normalize": "power"}}})
    document = yaml.safe_load((project / "stages.yaml").read_text())
    document["backbone"]["taps"] = TAPS
    write_config(project, document)
    config = load_config(project / "stages.yaml")
    run, _ = run_named(config, "extract", "probe", "heads", "finetune", "scratch")
    result = write_report(RunContext(config), project / "report.html")
    return result.path, result.path.read_text(encoding="utf-8"), run.path


def _wrong_answers(run: Path) -> list[dict]:
    """The best head's wrong test answers, from its predictions_test.csv."""
    best = json.loads((run / "metrics.json").read_text())["heads.best.name"]
    with open(run / "heads" / best / PREDICTIONS_NAME, encoding="utf-8") as fh:
        return [row for row in csv.DictReader(fh) if row["class"] != row["predicted"]]


def test_every_metric_a_run_of_every_stage_writes_is_a_documented_key(report):
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
    path, page, run = report
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    assert "cats" in page and "dogs" in page  # images per class
    assert "Skipped files (0)" in page and "Duplicates (0 groups" in page
    assert "images per second" in page
    assert "dense" in page and "val_accuracy" in page  # leaderboard
    # each head's parameters said once, beside the table, not as a JSON blob in every row
    board = page[page.index('<section id="leaderboard">'):page.index('<section id="mistakes">')]
    assert "<li><b>taps</b> (logistic_regression): features=block1_conv2.gap+block2_pool.gmp" \
        in board and "normalize=power" in board
    assert board.count("block1_conv2.gap+block2_pool.gmp") == 1 and "{" not in board
    assert re.search(r"<td>[01]\.\d{3}</td>", board)  # accuracies to 0.001, not 0.1234
    for title in ("dense head dense", "finetune phase1", "finetune phase2", "scratch train"):
        assert f'alt="{title} curves"' in page
    best = json.loads((run / "metrics.json").read_text())["heads.best.name"]
    assert all(f'alt="{t} on test"' in page for t in (f"best head {best}", "finetune", "scratch"))
    for recipe in ("CNN from scratch", "cached features + ", "frozen base + augmentation",
                   "block5 fine-tuned"):
        assert recipe in page
    # the probe: a chart and a row per tap and per part of the output
    assert 'alt="probe: validation accuracy per part"' in page
    for part in (*TAPS, "flatten", "gap", "gmp"):
        assert f"<td>{part}</td>" in page
    assert 'alt="the features on two principal components"' in page
    # the gallery: one thumbnail per wrong test answer, with its truth and prediction
    wrong = _wrong_answers(run)
    gallery = page[page.index('<section id="mistakes">'):page.index('<section id="map">')]
    assert gallery.count("data:image/jpeg;base64,") == len(wrong)
    assert f"{len(wrong)} of\n4 test images wrong" in gallery
    for answer in wrong:
        assert f'alt="{answer["path"]}"' in gallery
    # self-contained: no file, http or relative references, every image a data URI
    sources = re.findall(r'src="([^"]+)"', page)
    pngs = [s for s in sources if s.startswith("data:image/png;base64,")]
    jpegs = [s for s in sources if s.startswith("data:image/jpeg;base64,")]
    assert len(pngs) == 9 and len(pngs) + len(jpegs) == len(sources)
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_names_are_escaped_and_a_vanished_image_is_said(cached_project):
    heads = {"logreg": {"kind": "logistic_regression", "features": "gap", "params": {"C": 1e-6}}}
    project = cached_project(heads, per_split={"train": 6, "validation": 3, "test": 3},
                             classes=("cats", "<b>dogs</b>", "owls&co"))
    config = load_config(project / "stages.yaml")
    run_named(config, "heads")
    page = write_report(RunContext(config), project / "report.html").path.read_text()
    assert "<b>dogs</b>" not in page and "&lt;b&gt;dogs&lt;/b&gt;" in page
    assert "owls&amp;co" in page and "owls&co" not in page
    # the synthetic features have no image files: each mistake says so instead of a thumbnail
    assert "(no longer decodes)" in page and "data:image/jpeg" not in page


def test_the_cli_writes_the_report_into_the_runs_folder(tmp_path: Path, capsys):
    project = split_project(tmp_path)
    assert main(["report", "-c", str(project / "stages.yaml")]) == 0
    out = capsys.readouterr().out
    assert "report: " in out and (project / "runs" / "report.html").is_file()
    page = (project / "runs" / "report.html").read_text()
    assert "No dataset view yet" in page and "No recipe has run yet" in page


def test_runs_of_an_earlier_release_show_their_augmented_copies(tmp_path: Path, capsys):
    # metrics.json of releases before the rename has the augmented copies as "views"
    project = split_project(tmp_path)
    old = {"20240101-000000-extract-aaaa": {
               "extract.images": 16, "extract.images_per_second": 3.5,
               "extract.augmented_views_new": 14, "extract.augmented_views_cached": 2,
               "extract.augmented_views_seconds": 1.5},
           "20240101-000001-heads-bbbb": {
               "heads.trials": 1, "heads.train_augmented_views": 16,
               "heads.best.name": "dense", "heads.best.val_accuracy": 0.75}}
    for name, metrics in old.items():
        folder = project / "runs" / name
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("{}\n")
        (folder / "metrics.json").write_text(json.dumps(metrics))
    assert main(["report", "-c", str(project / "stages.yaml")]) == 0
    capsys.readouterr()
    page = (project / "runs" / "report.html").read_text()
    assert re.search(r"<td>augmented copies new</td>\s*<td>14</td>", page)
    assert re.search(r"<td>augmented copies cached</td>\s*<td>2</td>", page)
    assert "cached augmented copies (16) + dense head" in page
    assert "cached features + dense head" not in page  # that run trained on the copies


def test_the_report_renders_in_headless_chromium(report):
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser") or \
        shutil.which("google-chrome")
    if os.environ.get("PIPELINE_REQUIRE_BROWSER") == "1":  # .ci/run: a skip would hide a gap
        import playwright.sync_api as _  # noqa: F401  (an ImportError fails the test)
        assert browser_path, "PIPELINE_REQUIRE_BROWSER=1 but no Chromium on the PATH"
    playwright = pytest.importorskip("playwright.sync_api")
    if browser_path is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    path, _, run = report
    with playwright.sync_playwright() as p:
        # no background networking: on a machine without a network Chromium would keep
        # trying to reach its update and sync hosts
        browser = p.chromium.launch(executable_path=browser_path, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
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
    assert images == 9 + len(_wrong_answers(run)) and loaded
    assert sections == list(SECTIONS)
