"""The Python API: Project calls the command's code, and reads the cache without TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import Project
from pipeline.errors import ConfigError, MissingViewError
from pipeline.heads.features import FeatureRows
from tests.support.projects import REPO, context, make_image_folder, tiny_document, write_config

TAPS = "backbone.taps=[block3_conv3.gap, block4_conv3.gmp]"
LOGREG = ("stages.heads.models={lr: {kind: logistic_regression, features: "
          "[block3_conv3.gap, block4_conv3.gmp], normalize: power}}")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    make_image_folder(tmp_path / "data", {"cats": 5, "dogs": 5, "owls": 5})
    document = tiny_document()
    document["cluster"] = {"scheduler": "synchronous"}
    write_config(tmp_path, document)
    return tmp_path


def test_extract_then_the_dataset_table_and_features_in_its_order(project: Path):
    p = Project(project / "stages.yaml", overrides=[TAPS])
    with pytest.raises(MissingViewError, match="run `pipeline run extract` first"):
        p.dataset()
    outcome = p.extract()
    assert outcome.metrics["extract.images_new"] == 15 and outcome.path.is_dir()
    assert "extract: 15 new" in outcome.report
    table = p.dataset()
    assert list(table.columns) == ["path", "sha256", "label", "split"]
    assert len(table) == 15 and set(table["split"]) <= {"train", "validation", "test"}
    assert p.classes == ["cats", "dogs", "owls"]
    # the same rows, in the same order, as the heads read them
    ctx = context(project, TAPS)
    for split in ("train", "validation", "test"):
        rows = table[table["split"] == split]
        X, y = p.features(split, parts=["block4_conv3.gmp", "block3_conv3.gap"],
                          normalize="power")
        assert X.dtype == np.float32 and X.shape == (len(rows), 512 + 256)
        assert y.dtype == np.int64
        np.testing.assert_array_equal(y, [p.classes.index(label) for label in rows["label"]])
        cached = {tap: ctx.stores[tap].get(list(rows["sha256"]))
                  for tap in ("block3_conv3.gap", "block4_conv3.gmp")}
        np.testing.assert_allclose(
            X, FeatureRows(["block4_conv3.gmp", "block3_conv3.gap"], "power").transform(cached))
    # parts default to every tap; the output tensor flattened is there too
    assert p.features("train")[0].shape[1] == 256 + 512
    assert p.features("train", parts="flatten")[0].shape[1] == 512  # 32x32: (1, 1, 512)
    with pytest.raises(ValueError, match="unknown split 'training'"):
        p.features("training")
    with pytest.raises(ValueError, match="unknown normalize 'unit'"):
        p.features("train", normalize="unit")
    with pytest.raises(MissingViewError, match="keeps no block5_conv1.gap"):
        p.features("train", parts="block5_conv1.gap")
    again = p.extract()  # the command's lock: nothing to do
    assert "extract: up to date, skipped" in again.report
    states = p.status()
    assert list(states)[:3] == ["extract", "probe", "heads"]
    assert states["extract"].up_to_date and not states["heads"].up_to_date


def test_heads_and_predict_call_the_commands_code(project: Path, tmp_path: Path):
    p = Project(project / "stages.yaml", overrides=[TAPS, LOGREG])
    outcome = p.heads()  # extracts first, as `pipeline run heads` does
    assert outcome.metrics["heads.best.name"] == "lr"
    image = next((project / "data" / "owls").iterdir())
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not a picture")
    predictions = p.predict([image, not_an_image], top_k=2)
    assert [len(r.top) for r in predictions] == [2, 0]
    assert predictions[0].source == "cache" and predictions[0].top[0][0] in p.classes
    assert predictions[1].error is not None
    with pytest.raises(ValueError, match="unknown stage hedas"):
        p.run("hedas")


def test_a_bad_configuration_fails_when_the_project_is_made(project: Path):
    with pytest.raises(ConfigError, match="backbone.precision"):
        Project(project / "stages.yaml", overrides=["backbone.precision=float8"])


def test_the_api_imports_no_tensorflow_to_read_the_cache(project: Path):
    Project(project / "stages.yaml", overrides=[TAPS]).extract()
    script = ("import sys\nfrom pipeline import Project\n"
              f"p = Project({str(project / 'stages.yaml')!r}, overrides=[{TAPS!r}])\n"
              "p.dataset(); p.features('train')\n"
              "loaded = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')]\n"
              "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_a_run_that_failed_leaves_no_stale_listing_of_the_data_folder(project: Path,
                                                                      monkeypatch):
    """The listing of the data folder (the stats the scan trusts) is one call's: after a run
    that failed, an edited image is hashed again, not taken for its old content."""
    import os

    import pipeline.extract.run as extract_run
    from tests.support.projects import write_image
    p = Project(project / "stages.yaml")
    p.extract()
    before = dict(zip(p.dataset()["path"], p.dataset()["sha256"]))

    def failing_scan(*args, **kwargs):
        raise RuntimeError("interrupted")

    with monkeypatch.context() as patch:
        patch.setattr(extract_run, "scan_dataset", failing_scan)
        with pytest.raises(RuntimeError, match="interrupted"):
            p.extract(force=True)    # the listing of the data folder was taken, then failed
    edited = project / "data" / "cats" / "img_00.png"
    stat = edited.stat()
    write_image(edited, 12345)
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    p.extract()
    after = dict(zip(p.dataset()["path"], p.dataset()["sha256"]))
    assert after["cats/img_00.png"] != before["cats/img_00.png"]
