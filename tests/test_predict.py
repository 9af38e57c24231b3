"""``pipeline predict``: cached images use their cached features, new ones go through the
backbone, and every answer is the head's (or the end-to-end model's) own prediction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cache import FeatureStore
from pipeline.cli import main
from pipeline.config import load_config
from tests.support.projects import run_named, split_project, write_image

HEADS = {"logreg": {"kind": "logistic_regression", "features": "gap", "scale": True},
         "svm": {"kind": "linear_svm", "features": "gap", "scale": True}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """extract + heads + scratch on split folders; returns (project, run folder)."""
    project = split_project(tmp_path_factory.mktemp("predict"), heads={"models": HEADS})
    run, _ = run_named(load_config(project / "stages.yaml"), "extract", "heads", "scratch")
    return project, run.path


def _predict(capsys, project: Path, *args: str) -> tuple[int, list[dict], str]:
    code = main(["predict", *args, "--json", "-c", str(project / "stages.yaml")])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else [], err


def test_cached_images_are_classified_from_the_cache_as_the_head_would(trained, capsys):
    from pipeline.heads.saving import load_head

    project, run = trained
    head, metadata = load_head(run / "heads" / "logreg")
    code, results, _ = _predict(capsys, project, str(project / "data"), "--head",
                                str(run / "heads" / "logreg"), "-k", "2")
    assert code == 0 and len(results) == 16
    store = FeatureStore(project / "cache", metadata["fingerprint"])
    import hashlib
    shas = [hashlib.sha256(Path(r["path"]).read_bytes()).hexdigest() for r in results]
    x = store.get(shas)
    for result, proba, predicted in zip(results, head.predict_proba(x), head.predict(x)):
        assert result["source"] == "cache" and result["error"] is None
        top = result["predictions"]
        assert len(top) == 2 and top[0]["probability"] >= top[1]["probability"]
        assert top[0]["class"] == metadata["classes"][int(predicted)]  # the head's own answer
        assert top[0]["probability"] == pytest.approx(proba.max())


def test_cached_images_need_neither_the_backbone_nor_its_weights(trained, capsys, monkeypatch,
                                                               tmp_path: Path):
    import pipeline.backbone.model
    import pipeline.backbone.spec

    def forbidden(*args, **kwargs):
        raise AssertionError("predicting cached images looked for weights or built a model")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "no-weights-here"))
    monkeypatch.setattr(pipeline.backbone.spec, "resolve_weights", forbidden)
    monkeypatch.setattr(pipeline.backbone.model, "build_feature_extractor", forbidden)
    project, run = trained
    code = main(["predict", str(project / "data" / "test"), "--head", str(run / "heads" / "logreg"),
                 "--json", "-c", str(project / "stages.yaml"),
                 "--set", "backbone.weights=imagenet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert {r["source"] for r in json.loads(out)} == {"cache"}


def test_a_new_image_goes_through_the_backbone_and_a_bad_file_gets_an_error(trained, capsys,
                                                                             tmp_path: Path):
    from pipeline.backbone import backbone_spec
    from pipeline.backbone.model import build_feature_extractor
    from pipeline.data.decode import decode_file
    from pipeline.heads.saving import load_head

    project, run = trained
    new = write_image(tmp_path / "new.png", seed=999)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    code, results, _ = _predict(capsys, project, str(new), str(bad), "--head",
                                str(run / "heads" / "logreg"))
    assert code == 3  # finished, but a file was left out
    fresh, broken = results
    assert fresh["source"] == "backbone"
    spec = backbone_spec(load_config(project / "stages.yaml"))
    pixels = decode_file(new, spec.decode)[None].astype(np.float32)
    head, metadata = load_head(run / "heads" / "logreg")
    proba = head.predict_proba(np.asarray(build_feature_extractor(spec)(pixels)["output"]))[0]
    assert fresh["predictions"][0]["class"] == metadata["classes"][int(proba.argmax())]
    assert fresh["predictions"][0]["probability"] == pytest.approx(proba.max(), rel=1e-4)
    assert broken["error"] and "not an image" in broken["error"]
    # nothing was written to the cache
    assert len(FeatureStore(project / "cache", metadata["fingerprint"])) == 16


def test_default_head_is_the_newest_runs_best_and_svm_has_no_probabilities(trained, capsys):
    project, run = trained
    metrics = json.loads((run / "metrics.json").read_text())
    code = main(["predict", str(project / "data" / "test"), "-c", str(project / "stages.yaml")])
    out = capsys.readouterr().out
    assert code == 0 and out.count("(cache)") == 4
    assert metrics["heads.best.name"] in ("logreg", "svm")
    code, results, _ = _predict(capsys, project, str(project / "data" / "test"), "--head",
                                str(run / "heads" / "svm"))
    assert all(r["predictions"][0]["probability"] is None for r in results)
    import hashlib

    from pipeline.heads.saving import load_head
    svm, metadata = load_head(run / "heads" / "svm")
    store = FeatureStore(project / "cache", metadata["fingerprint"])
    x = store.get([hashlib.sha256(Path(r["path"]).read_bytes()).hexdigest() for r in results])
    assert [r["predictions"][0]["class"] for r in results] == \
        [metadata["classes"][i] for i in svm.predict(x)]


def test_an_end_to_end_model_predicts_what_it_scored(trained, capsys):
    project, run = trained
    code, results, _ = _predict(capsys, project, str(project / "data" / "test"), "--model",
                                str(run / "scratch"))
    assert code == 0 and {r["source"] for r in results} == {"model"}
    scores = json.loads((run / "scratch" / "evaluation.json").read_text())["test"]
    truth = [Path(r["path"]).parent.name for r in results]
    accuracy = np.mean([r["predictions"][0]["class"] == t for r, t in zip(results, truth)])
    assert accuracy == pytest.approx(scores["accuracy"])
    # image by image, the model's own answer
    from pipeline.backbone import backbone_spec
    from pipeline.data.decode import decode_file
    from pipeline.nn.runtime import keras
    model = keras.saving.load_model(run / "scratch" / "model.keras", safe_mode=True)
    decode = backbone_spec(load_config(project / "stages.yaml")).decode
    pixels = np.stack([decode_file(Path(r["path"]), decode) for r in results]).astype("float32")
    classes = json.loads((run / "scratch" / "model.json").read_text())["classes"]
    from pipeline.nn.outputs import class_probabilities
    assert [r["predictions"][0]["class"] for r in results] == \
        [classes[i] for i in class_probabilities(model(pixels)).argmax(axis=1)]


def test_predict_errors_are_one_line(trained, capsys, tmp_path: Path):
    project, run = trained
    code = main(["predict", str(tmp_path / "nothing.jpg"), "-c", str(project / "stages.yaml")])
    assert code == 1 and "no such file or folder" in capsys.readouterr().err
    code = main(["predict", str(project / "data"), "--model", str(tmp_path), "-c",
                 str(project / "stages.yaml")])
    assert code == 1 and "not a saved end-to-end model" in capsys.readouterr().err
    empty = tmp_path / "runs-empty"
    code = main(["predict", str(project / "data"), "-c", str(project / "stages.yaml"),
                 "--set", f"runs.dir={empty}"])
    assert code == 1 and "no trained head" in capsys.readouterr().err
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    code = main(["predict", str(bad), "--head", str(run / "heads" / "logreg"), "-c",
                 str(project / "stages.yaml")])
    out, err = capsys.readouterr()
    assert code == 1 and "not an image" in out  # the file's line, then why the command failed
    assert err == "error: none of the 1 file(s) could be classified\n"
    (tmp_path / "empty").mkdir()
    code = main(["predict", str(tmp_path / "empty"), "-c", str(project / "stages.yaml")])
    assert code == 1 and "no image files under" in capsys.readouterr().err


TAPS = ["block1_conv2.gap", "block2_pool.gmp"]


@pytest.fixture(scope="module")
def trained_on_taps(tmp_path_factory):
    """extract (two taps) + a logistic regression on them and the gap view; (project, head)."""
    import yaml

    from tests.support.projects import write_config
    project = split_project(tmp_path_factory.mktemp("predict-taps"), heads={"models": {
        "lr": {"kind": "logistic_regression", "features": [*TAPS, "gap"],
               "normalize": "power"}}})
    document = yaml.safe_load((project / "stages.yaml").read_text())
    document["backbone"]["taps"] = TAPS
    write_config(project, document)
    run, _ = run_named(load_config(project / "stages.yaml"), "extract", "heads")
    return project, run.path / "heads" / "lr"


def test_a_head_on_taps_predicts_cached_and_new_images_as_it_would(trained_on_taps, capsys,
                                                                   tmp_path: Path):
    import hashlib

    from pipeline.backbone import backbone_spec
    from pipeline.backbone.model import build_feature_extractor
    from pipeline.data.decode import decode_file
    from pipeline.heads.saving import load_head

    project, folder = trained_on_taps
    head, metadata = load_head(folder)
    assert set(metadata["sources"]) == {*TAPS, "output"}
    new = write_image(tmp_path / "new.png", seed=4242)
    test = sorted((project / "data" / "test").rglob("*.png"))
    code, results, _ = _predict(capsys, project, *map(str, test), str(new), "--head",
                                str(folder))
    assert code == 0 and [r["source"] for r in results] == ["cache"] * len(test) + ["backbone"]
    shas = [hashlib.sha256(path.read_bytes()).hexdigest() for path in test]
    cached = {source: FeatureStore(project / "cache", fingerprint).get(shas)
              for source, fingerprint in metadata["sources"].items()}
    spec = backbone_spec(load_config(project / "stages.yaml"))
    pixels = decode_file(new, spec.decode)[None].astype(np.float32)
    computed = {part: np.asarray(value) for part, value in
                build_feature_extractor(spec, ("output", *TAPS))(pixels).items()}
    probabilities = np.concatenate([head.predict_proba(cached), head.predict_proba(computed)])
    for result, proba in zip(results, probabilities):
        assert result["predictions"][0]["class"] == metadata["classes"][int(proba.argmax())]
        assert result["predictions"][0]["probability"] == pytest.approx(proba.max(), rel=1e-4)
