"""Bad input: every awkward file of a generated corpus is either cached or named with a reason,
the run finishes, the exit code says whether anything was left out, and nothing is written
outside the cache and run folders whatever the file names."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from cache import FeatureStore
from pipeline.cli import EXIT_FILES_SKIPPED, main
from pipeline.config import load_config
from pipeline.data.names import display_path
from pipeline.data.view import read_view
from tests.support.bad_inputs import NON_UTF8_NAME, write_corpus
from tests.support.projects import make_image_folder, tiny_document, write_config

MAX_PIXELS = 100_000


@pytest.fixture
def corpus_project(tmp_path: Path):
    """A project whose data folder is the bad-input corpus plus two ordinary classes."""
    project = tmp_path / "project"
    corpus = write_corpus(project / "data", MAX_PIXELS)
    for path in make_image_folder(project / "data", {"cats": 3, "dogs": 3}, start_seed=50):
        corpus.good.add(path.relative_to(project / "data").as_posix())
    document = tiny_document()
    document["data"]["max_pixels"] = MAX_PIXELS
    document["stages"]["heads"] = {"models": {"logreg": {"kind": "logistic_regression"}}}
    document["cluster"] = {"scheduler": "synchronous"}
    write_config(project, document)
    return project, corpus


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _tree(root: Path, leave_out: set[Path]) -> dict[str, tuple]:
    """Every entry under ``root`` (links not followed) with its type and mode, and for files
    their size and mtime (a folder's own size and mtime change with any entry added, and the
    entries are compared anyway)."""
    entries = {}
    for top, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = [d for d in dirs if Path(top, d) not in leave_out]
        for name in [*dirs, *files]:
            path = Path(top, name)
            if path in leave_out:
                continue
            info = path.lstat()
            entries[display_path(str(path))] = (info.st_mode,) if path.is_dir() and \
                not path.is_symlink() else (info.st_mode, info.st_size, info.st_mtime_ns)
    return entries


@pytest.mark.filterwarnings("always::pipeline.errors.EmptyClassWarning")
def test_every_bad_input_is_named_and_every_good_one_cached(corpus_project, capsys):
    project, corpus = corpus_project
    config_file = str(project / "stages.yaml")
    code, out, err = _run(capsys, "run", "extract", "-c", config_file, "--no-progress")
    assert code == EXIT_FILES_SKIPPED, err
    assert "Traceback" not in out + err
    assert f"left out of the dataset view (exit code {EXIT_FILES_SKIPPED})" in err

    config = load_config(project / "stages.yaml")
    (store_dir,) = [p for p in config.cache.dir.iterdir() if p.name.startswith("vgg16-")]
    (view_file,) = (store_dir / "views").glob("*.json")
    view = read_view(view_file)
    assert {image.path for image in view.images} == corpus.good
    assert {s.path: s.reason for s in view.skipped}.keys() == corpus.bad.keys()
    for skipped in view.skipped:
        assert corpus.bad[skipped.path] in skipped.reason, skipped
        # the summary names each bad file, on one line, with its reason
        assert f"  skipped {display_path(skipped.path)}: {skipped.reason}\n" in out
    # a file name that is not UTF-8 is cached, and the view keeps the exact bytes
    name = os.fsdecode(b"names/" + NON_UTF8_NAME)
    assert (project / "data" / name).exists() and name in corpus.good
    store = FeatureStore(config.cache.dir, view.fingerprint)
    assert store.missing([image.sha256 for image in view.images]) == []
    for ignored in corpus.ignored:
        assert ignored not in out + err and ignored not in view_file.read_text()
    for label in corpus.empty_classes:
        assert f"class {label!r} has no image files" in err
    for label in corpus.only_bad_classes:
        assert f"class {label!r} has no usable image: every file was skipped" in err
    (run_folder,) = (project / "runs").iterdir()
    with open(run_folder / "skipped.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(corpus.bad)
    summary = (run_folder / "summary.txt").read_text(encoding="utf-8")
    assert summary.count("\n  skipped ") == len(corpus.bad)

    # the next run has nothing to do, and still says files are left out: from the lock,
    # without parsing the view (a view of 10^6 images is most of a GB as Python objects)
    import pipeline.context
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline.context, "read_view", lambda path: pytest.fail("view parsed"))
        code, out, err = _run(capsys, "run", "extract", "-c", config_file, "--no-progress")
    assert code == EXIT_FILES_SKIPPED and "extract: up to date, skipped" in out
    assert f"{len(corpus.bad)} file(s) left out of the dataset view, as before" in out


def test_heads_train_on_what_survived_and_nothing_is_written_elsewhere(corpus_project,
                                                                       capsys):
    project, _ = corpus_project
    outside = project.parent
    outputs = {project / "cache", project / "runs", project / "pipeline.lock",
               project / ".pipeline.lock.lock"}
    before = _tree(outside, outputs)
    config_file = str(project / "stages.yaml")
    code, out, err = _run(capsys, "run", "heads", "-c", config_file, "--no-progress")
    assert code == EXIT_FILES_SKIPPED, err
    assert "best: logreg" in out
    code, out, err = _run(capsys, "report", "-c", config_file)
    assert code == 0, err
    code, out, err = _run(capsys, "predict", str(project / "data" / "mixed"), "-c", config_file)
    assert code == EXIT_FILES_SKIPPED, err  # classified what it could, said what it could not
    assert "good.png" in out and "notes.jpg" in out   # classified, and an error line
    assert _tree(outside, outputs) == before
    for written in (project / "cache", project / "runs"):
        for top, _, files in os.walk(written):
            for name in files:  # no data file name leaks into an output path
                assert Path(top, name).resolve().is_relative_to(written.resolve())


def test_exit_code_is_0_when_nothing_was_left_out(tmp_path: Path, capsys):
    make_image_folder(tmp_path / "data", {"cats": 2, "dogs": 2})
    write_config(tmp_path, tiny_document())
    config_file = str(tmp_path / "stages.yaml")
    code, out, err = _run(capsys, "run", "extract", "-c", config_file, "--no-progress")
    assert code == 0 and "0 skipped" in out and "left out" not in err
    (tmp_path / "data" / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    code, out, err = _run(capsys, "run", "extract", "-c", config_file, "--no-progress")
    assert code == EXIT_FILES_SKIPPED and "skipped cats/broken.jpg: " in out
    (tmp_path / "data" / "cats" / "broken.jpg").unlink()
    code, out, err = _run(capsys, "run", "extract", "-c", config_file, "--no-progress")
    assert code == 0 and "0 skipped" in out


@pytest.mark.parametrize("path, shown", [
    ("plain/name.jpg", "plain/name.jpg"),
    ("a\nb\tc.jpg", "a\\nb\\tc.jpg"),
    (os.fsdecode(b"caf\xe9.jpg"), "caf\\xe9.jpg"),
    ("图像 ünï.png", "图像 ünï.png"),
    ("a\\xffb.jpg", "a\\\\xffb.jpg"),     # the text \xff, not the byte: told apart
])
def test_display_path_is_one_printable_line(path, shown):
    assert display_path(path) == shown


def _hostile_keras_file(path: Path) -> Path:
    """A .keras file whose model holds a Python lambda (bytecode Keras would deserialize)."""
    from pipeline.nn.runtime import keras
    inputs = keras.Input((2, 2, 512))
    outputs = keras.layers.Dense(3, activation="softmax")(
        keras.layers.Flatten()(keras.layers.Lambda(lambda x: x * 2)(inputs)))
    path.parent.mkdir(parents=True, exist_ok=True)
    keras.Model(inputs, outputs).save(path)
    return path


def test_models_holding_python_code_are_refused(tmp_path: Path, capsys):
    from pipeline.errors import HeadLoadError
    from pipeline.heads.saving import HEAD_FORMAT, load_head
    make_image_folder(tmp_path / "data", {"cats": 1})
    write_config(tmp_path, tiny_document())
    head = tmp_path / "runs" / "x" / "heads" / "dense"
    _hostile_keras_file(head / "model.keras")
    (head / "head.json").write_text(json.dumps({
        "format": HEAD_FORMAT, "kind": "dense", "n_classes": 3, "model_file": "model.keras",
        "classes": ["a", "b", "c"]}), encoding="utf-8")
    with pytest.raises(HeadLoadError, match="cannot load.*(safe_mode|Lambda|lambda)"):
        load_head(head)
    image = str(tmp_path / "data" / "cats" / "img_00.png")
    config_file = str(tmp_path / "stages.yaml")
    code, _, err = _run(capsys, "predict", image, "--head", str(head), "-c", config_file)
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1
    model = _hostile_keras_file(tmp_path / "runs" / "x" / "finetune" / "model.keras")
    (model.parent / "model.json").write_text(json.dumps({"classes": ["a", "b", "c"]}),
                                             encoding="utf-8")
    code, _, err = _run(capsys, "predict", image, "--model", str(model.parent), "-c",
                        config_file)
    assert code == 1 and err.startswith("error: ") and "cannot load" in err
