"""The runner: stages run after what they depend on, skip when nothing they read changed,
rerun when an input or a parameter did, and `pipeline status` says which and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.runner import STAGE_ORDER, plan

from .conftest import split_project, write_image


def _run(capsys, project: Path, *args: str) -> str:
    code = main([*args, "-c", str(project / "stages.yaml")])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _status(capsys, project: Path) -> dict[str, str]:
    lines = _run(capsys, project, "status").strip().splitlines()
    return dict(line.split(": ", 1) for line in lines)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return split_project(tmp_path)


def test_plan_adds_dependencies_in_pipeline_order(project: Path):
    config = load_config(project / "stages.yaml")
    assert plan(config, ["heads"]) == ["extract", "heads"]
    assert plan(config, ["scratch", "extract"]) == ["extract", "scratch"]
    assert plan(config, ["finetune"]) == ["extract", "heads", "finetune"]  # head_from: auto
    fresh = load_config(project / "stages.yaml", ["stages.finetune.head_from=null"])
    assert plan(fresh, ["finetune"]) == ["extract", "finetune"]
    assert plan(config, ["all"]) == list(STAGE_ORDER)


def test_unchanged_stages_are_skipped_and_a_changed_parameter_reruns_only_its_stage(
        project: Path, capsys):
    assert all(v.startswith("stale: never run (no entry in pipeline.lock)")
               for v in _status(capsys, project).values())
    out = _run(capsys, project, "run", "heads", "--no-progress")
    assert "extract: 16 new" in out and "heads: 1 trials" in out  # extract ran first
    status = _status(capsys, project)
    assert status["extract"].startswith("up to date") and status["heads"].startswith("up to")

    out = _run(capsys, project, "run", "heads", "--no-progress")
    assert "extract: up to date, skipped" in out and "heads: up to date, skipped" in out

    epochs = "stages.heads.models.dense.params.epochs=3"
    assert _status(capsys, project)["heads"].startswith("up to date")
    changed = main(["status", "-c", str(project / "stages.yaml"), "--set", epochs])
    assert changed == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.strip().splitlines())
    assert lines["heads"] == ("stale: parameter stages.heads.models.dense.params.epochs "
                              "changed (2 -> 3)")
    assert lines["extract"].startswith("up to date")
    out = _run(capsys, project, "run", "heads", "--no-progress", "--set", epochs)
    assert "extract: up to date, skipped" in out and "heads: 1 trials" in out


def test_a_changed_input_reruns_the_stage_and_what_depends_on_it(project: Path, capsys):
    _run(capsys, project, "run", "heads", "--no-progress")
    write_image(project / "data" / "train" / "cats" / "new.png", seed=777)
    status = _status(capsys, project)
    assert status["extract"] == ("stale: data folder changed (files added, removed or "
                                 "modified)")
    assert status["heads"] == "stale: depends on stale extract"  # it will run after it
    out = _run(capsys, project, "run", "heads", "--no-progress")
    assert "extract: 1 new, 16 cached" in out
    assert "heads: 1 trials" in out and "on 9 train" in out  # the view changed: heads reran
    assert all(v.startswith("up to date") for k, v in _status(capsys, project).items()
               if k in ("extract", "heads"))


def test_force_reruns_the_named_stage_and_missing_outputs_make_a_stage_stale(
        project: Path, capsys):
    first = _run(capsys, project, "run", "heads", "--no-progress")
    out = _run(capsys, project, "run", "heads", "--no-progress", "--force")
    assert "extract: up to date, skipped" in out and "heads: 1 trials" in out
    run_folder = Path(out.strip().splitlines()[-1].removeprefix("run folder: "))
    (run_folder / "leaderboard.csv").unlink()
    assert _status(capsys, project)["heads"].startswith("stale: outputs missing")
    assert "heads: 1 trials" in _run(capsys, project, "run", "heads", "--no-progress")
    assert first != out


def test_a_view_that_extract_rewrites_identically_keeps_heads_up_to_date(project: Path,
                                                                          capsys):
    _run(capsys, project, "run", "heads", "--no-progress")
    _run(capsys, project, "run", "extract", "--no-progress", "--force")  # same images
    assert _status(capsys, project)["heads"].startswith("up to date")


def test_entries_verify_found_damaged_make_extract_run_again(project: Path, capsys):
    from cache import FeatureStore

    _run(capsys, project, "run", "extract", "--no-progress")
    config = load_config(project / "stages.yaml")
    from pipeline.fingerprint import backbone_fingerprint, backbone_spec
    store = FeatureStore(config.cache.dir, backbone_fingerprint(backbone_spec(config))[0])
    (store.path / store.shards()[0].name).unlink()
    assert main(["cache", "verify", "-c", str(project / "stages.yaml")]) == 1
    capsys.readouterr()
    assert _status(capsys, project)["extract"] == (
        "stale: outputs missing (4 cached entries of the dataset view are missing or damaged)")
    out = _run(capsys, project, "run", "extract", "--no-progress")
    assert "extract: 4 new, 12 cached" in out
    assert main(["cache", "verify", "-c", str(project / "stages.yaml")]) == 0
