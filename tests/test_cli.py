"""The pipeline command: output people read, exit codes scripts rely on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_describes_every_command(capsys):
    code, out, _ = _run(capsys, "--help")
    assert code == 0
    for word in ("run", "cache", "info", "stages.yaml", "--set"):
        assert word in out
    code, out, _ = _run(capsys, "run", "--help")
    assert code == 0 and "--set" in out and "KEY=VALUE" in out and "extract" in out
    code, out, _ = _run(capsys, "cache", "--help")
    assert code == 0 and "ls" in out and "info" in out


def test_run_extract_then_inspect_the_cache(tiny_project: Path, capsys):
    config = str(tiny_project / "stages.yaml")
    code, out, _ = _run(capsys, "run", "extract", "-c", config, "--no-progress")
    assert code == 0
    assert "extract: 12 new, 0 cached, 0 skipped" in out and "run folder:" in out
    code, out, _ = _run(capsys, "run", "extract", "-c", config, "--no-progress")
    assert code == 0 and "extract: up to date, skipped" in out
    code, out, _ = _run(capsys, "run", "extract", "-c", config, "--no-progress", "--force")
    assert code == 0 and "extract: 0 new, 12 cached" in out
    assert len(list((tiny_project / "runs").iterdir())) == 3  # one folder per run
    code, out, _ = _run(capsys, "cache", "ls", "-c", config)
    assert code == 0
    assert "random(seed=1)" in out and "32x32" in out and "1x1x512" in out
    assert "1 fingerprint(s), 12 entries" in out
    fingerprint = out.split("vgg16-", 1)[1].split()[0]
    code, out, _ = _run(capsys, "cache", "info", f"vgg16-{fingerprint[:6]}", "-c", config)
    assert code == 0 and "12 in 3 shard(s)" in out and "12 images, 3 classes" in out
    code, _, err = _run(capsys, "cache", "info", "vgg16-nope", "-c", config)
    assert code == 1 and err.startswith("error: no fingerprint 'vgg16-nope'")


def test_cache_ls_on_an_empty_cache(tiny_project: Path, capsys):
    code, out, _ = _run(capsys, "cache", "ls", "--dir", str(tiny_project / "nothing"))
    assert code == 0 and "empty" in out


def test_info_backbone_prints_the_layer_table(tiny_project: Path, capsys):
    code, out, _ = _run(capsys, "info", "backbone", "-c", str(tiny_project / "stages.yaml"),
                        "--set", "data.image_size=[150,150]")
    assert code == 0
    assert "block5_conv3" in out and "(None, 4, 4, 512)" in out
    assert "total parameters:       14,714,688" in out


def test_config_errors_are_one_line_with_exit_code_1(tiny_project: Path, capsys):
    code, out, err = _run(capsys, "run", "extract", "-c", str(tiny_project / "stages.yaml"),
                          "--set", "stages.extract.batch_size=-1", "--set", "data.colour=red")
    assert code == 1 and out == ""
    # both keys came from --set: the message names the command line, not the file
    assert err.count("\n") == 1 and err.startswith("error: --set ")
    assert "--set stages.extract.batch_size (command line): Input should be greater" in err
    assert "--set data.colour (command line): unknown key" in err


def test_set_typos_name_the_key_the_command_line_and_a_close_match(tiny_project: Path, capsys):
    config = str(tiny_project / "stages.yaml")
    code, _, err = _run(capsys, "status", "-c", config, "--set", "backbone.tapz=[]")
    assert code == 1
    assert err.startswith("error: --set backbone.tapz (command line): unknown key; did you "
                          "mean taps? (known here: weights, ")
    code, _, err = _run(capsys, "status", "-c", config, "--set", "heads.x.kind=knn")
    assert code == 1 and "heads: unknown key; did you mean stages.heads?" in err
    code, _, err = _run(capsys, "cache", "ls", "-c", config, "--set", "cache.lock_timout=3")
    assert code == 1 and err.startswith("error: --set cache.lock_timout (command line): "
                                        "unknown key; did you mean lock_timeout?")
    # a rule over a section that a --set took part in names both
    code, _, err = _run(capsys, "status", "-c", config, "--set", "data.split.train=0.8")
    assert code == 1 and err.startswith("error: stages.yaml with --set data.split.train: "
                                        "data.split: train + validation + test must be 1")
    # a typo in the file names the file
    text = (tiny_project / "stages.yaml").read_text()
    (tiny_project / "stages.yaml").write_text(text.replace("backbone:", "backbone:\n  waits: 1",
                                                           1))
    code, _, err = _run(capsys, "status", "-c", config)
    assert code == 1 and err.startswith("error: stages.yaml: backbone.waits: unknown key; "
                                        "did you mean weights?")


def test_every_error_has_one_style(tiny_project: Path, capsys):
    """click's own errors (bad option, bad choice) read like the pipeline's: ``error: ...``,
    after the usage line when the command line was wrong."""
    config = str(tiny_project / "stages.yaml")
    for args in (["status", "--bogus"], ["export", "--split", "train2", "-o", "x.npz"],
                 ["run", "extrct", "-c", config]):
        code, _, err = _run(capsys, *args)
        assert code == 2, args
        lines = err.splitlines()
        assert lines[0].startswith("Usage: pipeline ") and lines[-1].startswith("error: ")
        assert "Error:" not in err
    assert "unknown stage extrct (did you mean extract?)" in err


def test_status_json_and_check_exit_code(tiny_project: Path, capsys):
    config = str(tiny_project / "stages.yaml")
    code, out, _ = _run(capsys, "status", "-c", config, "--json", "--check")
    assert code == 1
    payload = json.loads(out)
    assert payload["format"] == 1 and payload["up_to_date"] is False
    assert [s["stage"] for s in payload["stages"]][:3] == ["extract", "probe", "heads"]
    assert payload["stages"][0]["reasons"] == ["never run (no entry in pipeline.lock)"]
    assert _run(capsys, "status", "-c", config)[0] == 0  # without --check: only a report
    assert _run(capsys, "run", "extract", "-c", config, "--no-progress")[0] == 0
    code, out, _ = _run(capsys, "status", "extract", "--check", "-c", config, "--json")
    assert code == 0
    (extract,) = json.loads(out)["stages"]
    assert extract["up_to_date"] is True and Path(extract["run"]).parent == tiny_project / "runs"
    assert _run(capsys, "status", "extract", "heads", "--check", "-c", config)[0] == 1
    for typo in (["extrakt"], ["all", "extrakt"]):
        code, _, err = _run(capsys, "status", *typo, "-c", config)
        assert code == 2 and "did you mean extract?" in err


def test_runs_and_cache_as_json(tiny_project: Path, capsys):
    config = str(tiny_project / "stages.yaml")
    assert json.loads(_run(capsys, "runs", "--json", "-c", config)[1])["runs"] == []
    assert _run(capsys, "run", "extract", "-c", config, "--no-progress")[0] == 0
    code, out, _ = _run(capsys, "runs", "--json", "-c", config)
    (run,) = json.loads(out)["runs"]
    assert code == 0 and run["status"] == "ok" and run["metrics"]["extract.images"] == 12
    assert Path(run["path"]).is_dir() and run["name"] == Path(run["path"]).name
    # a metrics.json edited by hand with numbers JSON has not: null, not a crash
    metrics = Path(run["path"]) / "metrics.json"
    metrics.write_text(metrics.read_text().replace("{", '{"x.nan": NaN, "x.inf": Infinity,', 1))
    code, out, _ = _run(capsys, "runs", "--json", "-c", config)
    (run,) = json.loads(out)["runs"]
    assert code == 0 and run["metrics"]["x.nan"] is None and run["metrics"]["x.inf"] is None
    code, out, _ = _run(capsys, "cache", "ls", "--json", "-c", config)
    listing = json.loads(out)
    (store,) = listing["stores"]
    assert code == 0 and listing["entries"] == store["entries"] == 12
    assert store["input_size"] == [32, 32] and store["shape"] == [1, 1, 512]
    assert store["weights"]["source"] == "random" and store["precision"] == "float32"
    assert listing["bytes"] == store["bytes"] > 0 and "views" not in store
    code, out, _ = _run(capsys, "cache", "info", store["fingerprint"][:10], "--json", "-c",
                        config)
    (info,) = json.loads(out)["stores"]
    (view,) = info["views"]
    assert code == 0 and view["images"] == 12 and view["classes"] == 3
    assert info["description"] == store["description"]
    (tiny_project / "cache" / "index.sqlite").write_bytes(b"not a database")
    code, out, err = _run(capsys, "cache", "reindex", "-c", config)
    assert code == 0 and out == f"{store['fingerprint']}: 12 entries indexed\n"
    assert "CacheDatabaseWarning" in err   # the damaged index was set aside, then rebuilt


def test_unknown_stage_is_a_usage_error(tiny_project: Path, capsys):
    code, _, err = _run(capsys, "run", "train", "-c", str(tiny_project / "stages.yaml"))
    assert code == 2 and "unknown stage train" in err


def test_missing_config_file(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, "run", "extract")
    assert code == 1 and "stages.yaml: no such configuration file" in err


@pytest.mark.slow
def test_console_script_is_installed(tiny_project: Path):
    import subprocess
    import sys
    exe = Path(sys.executable).parent / "pipeline"
    if not exe.exists():
        pytest.skip(f"no console script at {exe} (package not installed with pip)")
    out = subprocess.run([str(exe), "cache", "ls", "-c", str(tiny_project / "stages.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "empty" in out.stdout


@pytest.mark.parametrize("override, words", [
    ("runs.dir=stages.yaml", "stages.yaml"),
    ("cache.dir=~nosuchuser_xyz/c", "cache.dir"),
    ("data.image_size=[60000,60000]", "at most 4096"),
    ("cache.lock_timeout=.nan", "cache.lock_timeout"),
])
def test_bad_paths_and_sizes_give_one_error_line(tiny_project: Path, capsys, override, words):
    code, _, err = _run(capsys, "run", "extract", "-c", str(tiny_project / "stages.yaml"),
                        "--no-progress", "--set", override)
    assert code == 1
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err


def test_a_failed_run_says_so_in_its_folder(tiny_project: Path, capsys):
    (tiny_project / "cache").write_text("a file where the cache folder should be")
    code, _, err = _run(capsys, "run", "extract", "-c", str(tiny_project / "stages.yaml"),
                        "--no-progress")
    assert code == 1 and err.startswith("error: ")
    (run,) = (tiny_project / "runs").iterdir()
    assert "failed:" in (run / "summary.txt").read_text()


def test_runs_lists_every_run_with_status_and_headline_metrics(tiny_project: Path, capsys):
    config = str(tiny_project / "stages.yaml")
    assert "no runs yet" in _run(capsys, "runs", "-c", config)[1]
    assert _run(capsys, "run", "extract", "-c", config, "--no-progress")[0] == 0
    (tiny_project / "cache").rename(tiny_project / "cache-moved")
    (tiny_project / "cache").write_text("a file where the cache folder should be")
    assert _run(capsys, "run", "extract", "-c", config, "--no-progress")[0] == 1
    code, out, _ = _run(capsys, "runs", "-c", config)
    assert code == 0
    header, first, second = out.strip().splitlines()
    assert header.split()[:4] == ["run", "status", "images", "new"]
    assert first.split()[1:4] == ["ok", "12", "12"] and "-extract-" in first
    assert second.split()[1] == "failed" and second.split()[2] == "-"


def test_cache_commands_need_only_the_cache_section(tiny_project: Path, capsys):
    config = str(tiny_project / "stages.yaml")
    assert _run(capsys, "run", "extract", "-c", config, "--no-progress")[0] == 0
    import shutil
    shutil.rmtree(tiny_project / "data")  # the images are gone, the cache is not
    code, out, _ = _run(capsys, "cache", "ls", "-c", config)
    assert code == 0 and "12 entries" in out
    code, _, err = _run(capsys, "cache", "ls", "-c", config, "--set", "cache.lock_timeout=x")
    assert code == 1 and err == ("error: --set cache.lock_timeout (command line): Input should "
                                 "be a valid number (got 'x')\n")


def test_run_heads_prints_the_leaderboard_and_names_bad_params(cached_project, capsys):
    project = cached_project({"lr": {"kind": "logistic_regression", "features": "gap",
                                     "sweep": {"params": {"C": [0.1, 1.0]}}}})
    config = str(project / "stages.yaml")
    code, out, _ = _run(capsys, "run", "heads", "-c", config, "--no-progress")
    assert code == 0
    assert "heads: 2 trials of 1 heads" in out and "rank  head" in out and "best: lr" in out
    code, _, err = _run(capsys, "run", "heads", "-c", config, "--no-progress",
                        "--set", "stages.heads.models.lr.params.C=-1.0")
    assert code == 1 and err.startswith("error: stages.yaml: stages.heads.models.lr.params")


def test_scheduler_option_sends_the_sweep_to_a_running_scheduler(cached_project, capsys):
    from distributed import LocalCluster

    project = cached_project({"knn": {"kind": "knn", "features": "gap",
                                      "sweep": {"params": {"n_neighbors": [1, 3]}}}})
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster:
        code, out, _ = _run(capsys, "run", "heads", "-c", str(project / "stages.yaml"),
                            "--no-progress", "--scheduler", cluster.scheduler_address)
    assert code == 0 and f"dask {cluster.scheduler_address}" in out


def test_a_bad_scheduler_value_is_a_config_error(cached_project, capsys):
    project = cached_project({"knn": {"kind": "knn"}})
    code, _, err = _run(capsys, "run", "heads", "-c", str(project / "stages.yaml"),
                        "--scheduler", "somewhere")
    assert code == 1 and "cluster.scheduler" in err
