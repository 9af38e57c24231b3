"""Keras' JAX and PyTorch backends: every stage runs on them, extraction, prediction and the
scikit-learn heads import no TensorFlow there, and the features equal TensorFlow's.

The backend is fixed when Keras is imported, so each backend runs in a child process
(:mod:`tests.support.backend_child`). A backend whose package is absent skips, unless
``PIPELINE_REQUIRE_BACKENDS=1`` (``.ci/run`` installs both, and a skip there would hide a gap).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.projects import REPO, context, extract, write_image

TAPS = "backbone.taps=[block3_conv3.gap, block4_conv3.gmp]"
HEADS = ("stages.heads.models={lr: {kind: logistic_regression, features: [gap, "
         "block3_conv3.gap], normalize: power, params: {C: 10}}}")
DENSE = "stages.heads.models={d: {kind: dense, params: {epochs: 2, units: 8, batch_size: 4}}}"
SHORT = ["stages.finetune.frozen_epochs=1", "stages.finetune.finetune_epochs=1",
         "stages.finetune.batch_size=4", "stages.scratch.epochs=1", "stages.scratch.batch_size=4"]


def _require(backend: str) -> None:
    if importlib.util.find_spec(backend) is None:
        if os.environ.get("PIPELINE_REQUIRE_BACKENDS") == "1":
            pytest.fail(f"PIPELINE_REQUIRE_BACKENDS=1 but {backend} is not installed")
        pytest.skip(f"{backend} is not installed (pip install '.[{backend}]')")


def _sets(*overrides: str) -> list[str]:
    return [argument for o in overrides for argument in ("--set", o)]


def _run_on(backend: str, project: Path, commands: list[list[str]]) -> list[dict]:
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "tests.support.backend_child",
                           str(project / "stages.yaml"), json.dumps(commands)],
                          env=env, cwd=project, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # TensorFlow's start-up messages stay hidden, also when Keras imports it to save a model
    assert "cpu_feature_guard" not in done.stderr and "oneDNN" not in done.stderr, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["backend"] == backend
    return report["commands"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_every_stage_runs_on_the_backend_and_the_features_equal_tensorflows(
        tiny_project: Path, backend: str):
    _require(backend)
    own = f"cache.dir=cache_{backend}"
    new_image = write_image(tiny_project / "new.png", seed=99)
    base = [own, TAPS, "cluster.scheduler=synchronous", "stages.extract.augmented_copies.count=1"]
    commands = [
        ["run", "extract", "--no-progress", *_sets(*base)],
        ["run", "heads", "--no-progress", *_sets(*base, HEADS)],
        ["predict", str(tiny_project / "data" / "cats" / "img_00.png"), str(new_image),
         *_sets(*base)],
        # Keras imports TensorFlow, where installed, to save any .keras model: these may
        ["run", "heads", "finetune", "scratch", "--no-progress", *_sets(*base, DENSE, *SHORT)],
    ]
    report = _run_on(backend, tiny_project, commands)
    assert [entry["exit"] for entry in report] == [0, 0, 0, 0], report
    assert not any(entry["tensorflow"] for entry in report[:3]), report
    runs = sorted((tiny_project / "runs").iterdir())
    metrics = json.loads((runs[-1] / "metrics.json").read_text())
    for key in ("heads.best.val_accuracy", "finetune.val_accuracy", "scratch.val_accuracy"):
        assert key in metrics

    # the same backbone fingerprint, and features within 1e-4 of the largest value
    result = extract(tiny_project, TAPS)
    tensorflow, other = context(tiny_project, TAPS), context(tiny_project, TAPS, own)
    assert other.fingerprint.id == result.fingerprint
    for part, store in tensorflow.stores.items():
        shas = store.sha256s()
        expected, got = store.get(shas), other.stores[part].get(shas)
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max(), part


@pytest.mark.slow
def test_the_gpu_benchmark_runs_on_the_jax_backend_without_a_gpu(tiny_project: Path):
    _require("jax")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "bench.gpu_extract", "--backend", "jax",
                           "--data", str(tiny_project / "data"), "--images", "16", "--size", "32",
                           "--batch-sizes", "8", "--precisions", "float32", "--threads", "2"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("backend jax, cpu")
    assert any(line.startswith("decode alone, 2 threads:") for line in lines)
    header = next(line for line in lines if line.startswith("precision"))
    assert header.split()[2:] == ["bare", "device", "bare", "call", "pipeline", "2", "threads"]
    row = lines[-1].split()
    assert row[:2] == ["float32", "8"] and all(float(v.replace(",", "")) > 0 for v in row[2:])


def test_the_backend_is_read_as_keras_reads_it(tmp_path: Path, monkeypatch):
    from pipeline.errors import BackendError
    from pipeline.nn.backend import check_backend, keras_backend_name

    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert keras_backend_name() == "tensorflow"  # no keras.json: Keras' default
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "torch"}))
    assert keras_backend_name() == "torch"
    monkeypatch.setenv("KERAS_BACKEND", "jax")  # the variable wins over the file
    assert keras_backend_name() == "jax"
    with pytest.raises(BackendError, match="KERAS_BACKEND=numpy: the pipeline runs on "
                                           "tensorflow, jax, torch"):
        check_backend("numpy")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendError, match=r"jax is not installed: pip install "
                                           r"'vgg16-feature-pipeline\[jax\]'"):
        check_backend("jax")


def test_an_unknown_backend_is_one_error_line_before_any_work(tiny_project: Path):
    env = {**os.environ, "KERAS_BACKEND": "numpy", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "extract",
                           "--no-progress", "-c", str(tiny_project / "stages.yaml")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: KERAS_BACKEND=numpy: the pipeline runs on tensorflow, jax, torch"]
    assert not (tiny_project / "cache").exists() or not any((tiny_project / "cache").iterdir())


def test_the_tensorflow_backend_imports_no_jax_and_leaves_it_importable():
    # TensorFlow's TFLite helpers would import JAX (106 MiB) where the JAX extra is installed
    _require("jax")
    code = ("import sys\n"
            "import pipeline.nn.runtime\n"
            "print('jax' in sys.modules, 'tensorflow' in sys.modules)\n"
            "import jax.numpy\n"
            "print(float(jax.numpy.ones(3).sum()))\n")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["False", "True", "3.0"]
