"""The runner: stages run after what they depend on, skip when nothing they read changed,
rerun when an input or a parameter did, and `pipeline status` says which and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.runner.plan import plan
from pipeline.runner.registry import stage_names
from tests.support.projects import context, split_project, write_image


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
    ctx = context(project)

    def names(ctx, targets):
        return [stage.name for stage in plan(ctx, targets)]

    assert names(ctx, ["heads"]) == ["extract", "heads"]
    assert names(ctx, ["scratch", "extract"]) == ["extract", "scratch"]
    assert names(ctx, ["finetune"]) == ["extract", "heads", "finetune"]  # head_from: auto
    fresh = context(project, "stages.finetune.head_from=null")
    assert names(fresh, ["finetune"]) == ["extract", "finetune"]
    assert names(ctx, ["probe", "heads"]) == ["extract", "probe", "heads"]
    assert names(ctx, ["all"]) == list(stage_names()) == ["extract", "probe", "heads",
                                                           "finetune", "scratch"]


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


def test_a_lock_of_an_earlier_release_with_renamed_keys_keeps_stages_up_to_date(
        project: Path, capsys):
    import json
    _run(capsys, project, "run", "heads", "--no-progress")
    lock = project / "pipeline.lock"
    text = lock.read_text()
    assert text.count('"augmented_copies"') == 2  # stages.extract's and stages.heads'
    lock.write_text(text.replace('"augmented_copies"', '"augmented_views"'))  # as it was
    status = _status(capsys, project)
    assert status["extract"].startswith("up to date") and status["heads"].startswith("up to")
    old = json.loads(lock.read_text())
    old["stages"]["heads"]["params"]["stages.heads"]["augmented_views"] = False
    lock.write_text(json.dumps(old))
    assert _status(capsys, project)["heads"] == ("stale: parameter "
                                                 "stages.heads.augmented_copies changed "
                                                 "(False -> True)")


def test_a_lock_written_before_a_key_existed_is_up_to_date_at_its_default(project: Path,
                                                                          capsys):
    # backbone.flip_average came after this lock: false is what that release did
    import json
    _run(capsys, project, "run", "extract", "--no-progress")
    lock = project / "pipeline.lock"
    old = json.loads(lock.read_text())
    del old["stages"]["extract"]["params"]["backbone"]["flip_average"]
    lock.write_text(json.dumps(old))
    assert _status(capsys, project)["extract"].startswith("up to date")
    config = project / "stages.yaml"
    config.write_text(config.read_text().replace("backbone:", "backbone:\n  flip_average: true"))
    assert _status(capsys, project)["extract"].startswith(
        "stale: parameter backbone.flip_average changed (<unset> -> True)")


def test_entries_lost_after_extract_make_it_stale_whatever_removed_them(project: Path,
                                                                        capsys):
    """The lock records each store's version, so an unchanged store is not asked for every
    image; a shard deleted by hand or entries collected by gc change the version."""
    _run(capsys, project, "run", "extract", "--no-progress")
    assert _status(capsys, project)["extract"].startswith("up to date")
    store = context(project).store
    (store.path / store.shards()[-1].name).unlink()   # by hand: the journal still lists it
    assert _status(capsys, project)["extract"].startswith(
        "stale: outputs missing (4 cached entries of the dataset view are missing")
    _run(capsys, project, "run", "extract", "--no-progress")
    assert _status(capsys, project)["extract"].startswith("up to date")
    from cache import open_writer
    store = context(project).store
    with open_writer(store, store.description) as writer:   # as gc does
        writer.remove_entries(store.sha256s()[:1])
    assert _status(capsys, project)["extract"].startswith(
        "stale: outputs missing (1 cached entries of the dataset view are missing")


def test_entries_verify_found_damaged_make_extract_run_again(project: Path, capsys):
    _run(capsys, project, "run", "extract", "--no-progress")
    store = context(project).store
    (store.path / store.shards()[0].name).unlink()
    assert main(["cache", "verify", "-c", str(project / "stages.yaml")]) == 1
    capsys.readouterr()
    assert _status(capsys, project)["extract"] == (
        "stale: outputs missing (4 cached entries of the dataset view are missing or damaged)")
    out = _run(capsys, project, "run", "extract", "--no-progress")
    assert "extract: 4 new, 12 cached" in out
    assert main(["cache", "verify", "-c", str(project / "stages.yaml")]) == 0


def test_a_stage_declared_once_is_planned_run_locked_and_reported(project: Path, capsys,
                                                                  monkeypatch):
    # A new stage is one declaration and one line in the registry: nothing else learns of it.
    import json

    from pipeline.runner import registry
    from pipeline.stage import DATASET_VIEW, Stage, StageReport, run_file

    def run(ctx, folder: Path, progress: bool):
        images = len(ctx.require_view().images)
        (folder / "toy.txt").write_text(f"{images} images\n")
        return StageReport((f"toy: counted {images} images",), {"toy.images": images})

    toy = Stage(name="toy", help="counts the images of the dataset view.", run=run,
                params=("stages.scratch",), deps=(DATASET_VIEW,),
                outputs=(run_file("toy.txt"),), needs=lambda config: ("extract",))
    monkeypatch.setattr(registry, "STAGES", (*registry.STAGES, toy))

    assert [stage.name for stage in plan(context(project), ["toy"])] == ["extract", "toy"]
    assert _status(capsys, project)["toy"] == ("stale: never run (no entry in pipeline.lock); "
                                               "depends on stale extract")
    out = _run(capsys, project, "run", "toy", "--no-progress")
    assert "extract: 16 new" in out and "toy: counted 16 images" in out
    run_folder = Path(out.strip().splitlines()[-1].removeprefix("run folder: "))
    assert (run_folder / "toy.txt").read_text() == "16 images\n"
    assert json.loads((run_folder / "metrics.json").read_text())["toy.images"] == 16
    assert "toy: counted 16 images" in (run_folder / "summary.txt").read_text()
    entry = json.loads((project / "pipeline.lock").read_text())["stages"]["toy"]
    assert set(entry["params"]) == {"stages.scratch"} and set(entry["deps"]) == {"dataset_view"}
    assert _status(capsys, project)["toy"] == f"up to date (outputs in {run_folder})"

    assert "toy: up to date, skipped" in _run(capsys, project, "run", "toy", "--no-progress")
    assert main(["status", "-c", str(project / "stages.yaml"),
                 "--set", "stages.scratch.epochs=3"]) == 0
    assert "toy: stale: parameter stages.scratch.epochs changed (1 -> 3)" in \
        capsys.readouterr().out
    (run_folder / "toy.txt").unlink()
    assert _status(capsys, project)["toy"] == \
        f"stale: outputs missing (expected {run_folder / 'toy.txt'})"
    assert main(["run", "toy", "nosuch", "-c", str(project / "stages.yaml")]) == 2
    assert "stages: extract, probe, heads, finetune, scratch, toy, or all" in \
        capsys.readouterr().err


_UPDATE_LOCK_MANY_TIMES = """
import sys
from pipeline.config import load_config
from pipeline.runner.lock import update_lock
config = load_config(sys.argv[1])
stage, times = sys.argv[2], int(sys.argv[3])
for _ in range(times):
    update_lock(config, stage, lambda locked: {"n": locked.get(stage, {}).get("n", 0) + 1})
"""


def test_two_runs_updating_the_lock_at_once_lose_no_entry(project: Path):
    # each process counts its own stage's updates in the lock; an update made without the
    # file lock would read the other's stale copy of our entry back, and lose counts
    import json
    import subprocess
    import sys

    from tests.support.projects import REPO

    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    children = [subprocess.Popen([sys.executable, "-c", _UPDATE_LOCK_MANY_TIMES,
                                  str(project / "stages.yaml"), stage, "40"], env=env)
                for stage in ("extract", "heads")]
    assert [child.wait(timeout=120) for child in children] == [0, 0]
    stages = json.loads((project / "pipeline.lock").read_text())["stages"]
    assert stages == {"extract": {"n": 40}, "heads": {"n": 40}}


def test_status_without_the_imagenet_weights_names_the_stale_stages_and_downloads_nothing(
        project: Path, capsys, monkeypatch, tmp_path: Path):
    import pipeline.backbone.model
    import pipeline.backbone.weights

    _run(capsys, project, "run", "heads", "--no-progress")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))

    def forbidden(*args, **kwargs):
        raise AssertionError("a command that only reads downloaded weights or built a model")

    monkeypatch.setattr(pipeline.backbone.weights, "fetch_imagenet_weights", forbidden)
    monkeypatch.setattr(pipeline.backbone.model, "build_feature_extractor", forbidden)
    monkeypatch.setattr(pipeline.backbone.model, "build_vgg16_base", forbidden)
    config = ["-c", str(project / "stages.yaml"), "--set", "backbone.weights=imagenet"]
    assert main(["status", *config]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.strip().splitlines())
    assert lines["extract"].startswith("stale: parameter backbone.weights changed (None -> "
                                       "imagenet); its inputs cannot be checked, the backbone "
                                       "weights are missing (backbone.weights: imagenet: ")
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 not found" in lines["extract"]
    assert lines["heads"].startswith("stale: its inputs cannot be checked") and \
        lines["heads"].endswith("; depends on stale extract")
    assert main(["report", *config]) == 0
    assert "report:" in capsys.readouterr().out
    assert "weights are missing" in (project / "runs" / "report.html").read_text()
    assert main(["runs", *config]) == 0 and main(["cache", "ls", *config]) == 0
