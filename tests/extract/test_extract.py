"""The extract stage end to end on tiny images: exact features, reuse, resume, bad files."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cache import CacheLockWaitWarning, FeatureStore
from pipeline.backbone import backbone_spec
from pipeline.config import load_config
from pipeline.data.view import read_view
from pipeline.errors import SkippedImageWarning
from tests.support.projects import extract, run_named, write_image


@pytest.fixture
def count_inference(monkeypatch):
    """Counts images sent through the backbone; ``fail_after`` makes the n-th batch raise."""
    import pipeline.nn.inference as inference

    real = inference.compiled_inference
    state = {"images": 0, "batches": 0, "fail_after": None, "error": RuntimeError}

    def counting(model):
        infer = real(model)

        def call(pixels):
            if state["fail_after"] is not None and state["batches"] >= state["fail_after"]:
                raise state["error"]("stopped by the test")
            state["images"] += len(pixels)
            state["batches"] += 1
            return infer(pixels)
        return call

    monkeypatch.setattr(inference, "compiled_inference", counting)
    return state


def _extract(project: Path, *overrides: str, progress: bool = False):
    return extract(project, *overrides, progress=progress)


def test_cached_features_equal_keras_on_keras_preprocessed_images(tiny_project: Path):
    from pipeline.backbone.model import build_vgg16_base
    from pipeline.nn.runtime import keras
    result = _extract(tiny_project)
    assert result.new == 12 and result.cached == 0 and not result.skipped
    config = load_config(tiny_project / "stages.yaml")
    base = build_vgg16_base(backbone_spec(config))
    images = result.view.images
    batch = np.stack([keras.utils.img_to_array(keras.utils.load_img(
        tiny_project / "data" / image.path, target_size=(32, 32), interpolation="bilinear"))
        for image in images])
    expected = base.predict(keras.applications.vgg16.preprocess_input(batch), verbose=0)
    stored = FeatureStore(config.cache.dir, result.fingerprint).get(
        [image.sha256 for image in images])
    assert stored.shape == (12, 1, 1, 512) and stored.dtype == np.float32
    np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-3)


def test_rerun_does_no_inference(tiny_project: Path, count_inference):
    _extract(tiny_project)
    assert count_inference["images"] == 12
    again = _extract(tiny_project)
    assert (again.new, again.cached) == (0, 12)
    assert count_inference["images"] == 12


def test_rerun_with_nothing_new_never_imports_tensorflow(tiny_project: Path):
    _extract(tiny_project)
    code = ("import sys; from pipeline.config import load_config; "
            "from pipeline.context import RunContext; "
            "from pipeline.extract.run import run_extract; "
            f"r = run_extract(RunContext(load_config({str(tiny_project / 'stages.yaml')!r})), "
            "progress=False); "
            "assert (r.new, r.cached) == (0, 12), (r.new, r.cached); "
            "assert 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_renamed_and_copied_images_are_cache_hits(tiny_project: Path, count_inference):
    _extract(tiny_project)
    data = tiny_project / "data"
    (data / "cats" / "img_00.png").rename(data / "cats" / "renamed.png")
    shutil.copy(data / "dogs" / "img_01.png", data / "dogs" / "copy.png")
    result = _extract(tiny_project)
    assert result.new == 0 and count_inference["images"] == 12
    assert {"cats/renamed.png", "dogs/copy.png"} <= {i.path for i in result.view.images}
    assert len(result.view.images) == 13


def test_adding_k_images_costs_k_inferences(tiny_project: Path, count_inference):
    _extract(tiny_project)
    for i in range(3):
        write_image(tiny_project / "data" / "owls" / f"new_{i}.png", 700 + i)
    result = _extract(tiny_project)
    assert (result.new, result.cached) == (3, 12)
    assert count_inference["images"] == 15


def test_changing_image_size_makes_a_new_fingerprint_and_keeps_the_old(tiny_project: Path):
    small = _extract(tiny_project)
    large = _extract(tiny_project, "data.image_size=[64,64]")
    assert large.fingerprint != small.fingerprint and large.new == 12
    cache_dir = load_config(tiny_project / "stages.yaml").cache.dir
    shas = [i.sha256 for i in small.view.images]
    assert FeatureStore(cache_dir, small.fingerprint).get(shas).shape == (12, 1, 1, 512)
    assert FeatureStore(cache_dir, large.fingerprint).get(shas).shape == (12, 2, 2, 512)
    assert _extract(tiny_project).new == 0  # the old entries are still used


def test_bad_files_are_skipped_listed_and_not_retried(tiny_project: Path, monkeypatch):
    data = tiny_project / "data"
    (data / "cats" / "empty.jpg").write_bytes(b"")
    (data / "dogs" / "notes.jpg").write_text("a text file")
    good = write_image(data / "owls" / "cut.jpg", 5, size=(120, 120), fmt="JPEG").read_bytes()
    (data / "owls" / "cut.jpg").write_bytes(good[: len(good) // 2])
    with pytest.warns(SkippedImageWarning) as caught:
        result = _extract(tiny_project)
    reasons = {s.path: s.reason for s in result.skipped}
    assert reasons.keys() == {"cats/empty.jpg", "dogs/notes.jpg", "owls/cut.jpg"}
    assert reasons["cats/empty.jpg"] == "empty file"
    assert reasons["dogs/notes.jpg"].startswith("not an image")
    assert reasons["owls/cut.jpg"].startswith("truncated or corrupt")
    assert {str(w.message) for w in caught} >= {f"skipped {p}: {r}" for p, r in reasons.items()}
    assert result.new == 12 and len(result.view.images) == 12
    import pipeline.data.batches
    decoded = []
    real_decode = pipeline.data.batches.decode_file
    monkeypatch.setattr(pipeline.data.batches, "decode_file",
                        lambda path, *a, **k: decoded.append(path) or real_decode(path, *a, **k))
    with pytest.warns(SkippedImageWarning):  # still reported on every run
        again = _extract(tiny_project)
    assert {s.path for s in again.skipped} == reasons.keys()
    assert decoded == []  # known-bad bytes are not even decoded again


def test_after_extracting_the_index_remembers_the_images_are_all_cached(tiny_project: Path,
                                                                       monkeypatch):
    """The next command's ask about every image (a rerun's check, --force) is then answered
    from the entry index's memo; images refused as undecodable are asked about apart, so they
    do not keep the ask from being complete."""
    import sqlite3

    import cache.index
    monkeypatch.setattr(cache.index, "REMEMBERED_KEYS", 2)
    (tiny_project / "data" / "dogs" / "notes.jpg").write_text("a text file")
    database = tiny_project / "cache" / "index.sqlite"

    def remembered() -> int:
        with sqlite3.connect(database) as db:
            return db.execute("SELECT COUNT(*) FROM present_sets").fetchone()[0]

    with pytest.warns(SkippedImageWarning):
        first = _extract(tiny_project)
    assert first.new == 12 and remembered() == 0  # a new failure: not all cached
    with pytest.warns(SkippedImageWarning):
        again = _extract(tiny_project)
    assert again.new == 0 and remembered() == 1   # refused apart: the rest all cached
    write_image(tiny_project / "data" / "owls" / "new.png", 4242)
    with pytest.warns(SkippedImageWarning):
        third = _extract(tiny_project)
    assert third.new == 1 and remembered() == 1   # the new set, remembered as it was cached
    with sqlite3.connect(database) as db:
        (keys,) = db.execute("SELECT keys FROM present_sets").fetchone()
    from cache.index import _keys_digest
    assert keys == _keys_digest([i.sha256 for i in third.view.images])


def test_a_failure_mid_run_keeps_finished_batches_and_resumes(tiny_project: Path,
                                                              count_inference):
    count_inference["fail_after"] = 2
    with pytest.raises(RuntimeError, match="stopped by the test"):
        _extract(tiny_project)
    config = load_config(tiny_project / "stages.yaml")
    (store_dir,) = [p for p in config.cache.dir.iterdir() if p.is_dir()]
    assert len(FeatureStore(config.cache.dir, store_dir.name)) == 8  # two batches of 4
    count_inference["fail_after"] = None
    result = _extract(tiny_project)
    assert (result.new, result.cached) == (4, 8)
    store = FeatureStore(config.cache.dir, result.fingerprint)
    assert len(store) == 12 and sum(s.rows for s in store.shards()) == 12


def test_ctrl_c_keeps_finished_batches(tiny_project: Path, count_inference, capsys):
    from pipeline.cli import main
    count_inference["fail_after"] = 1
    count_inference["error"] = KeyboardInterrupt
    code = main(["run", "extract", "-c", str(tiny_project / "stages.yaml"), "--no-progress"])
    assert code == 130
    assert "interrupted" in capsys.readouterr().err
    count_inference["fail_after"] = None
    assert _extract(tiny_project).new == 8


def test_view_and_run_folder(tiny_project: Path):
    config = load_config(tiny_project / "stages.yaml")
    (tiny_project / "data" / "owls" / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(SkippedImageWarning):
        run, report = run_named(config, "extract")
    assert "12 new, 0 cached, 1 skipped" in report
    metrics = __import__("json").loads((run.path / "metrics.json").read_text())
    assert metrics["extract.images_new"] == 12 and metrics["extract.images_skipped"] == 1
    assert metrics["extract.images_per_second"] > 0
    with open(run.path / "dataset.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 and set(rows[0]) == {"path", "class", "split", "sha256"}
    with open(run.path / "skipped.csv", newline="") as fh:
        (skipped,) = list(csv.DictReader(fh))
    assert skipped["path"] == "owls/bad.png"
    assert (run.path / "config.yaml").is_file()
    assert (run.path / "duplicates.csv").read_text().startswith("kind,sha256,paths")
    assert metrics["extract.duplicate_groups"] == 0
    (view_file,) = (config.cache.dir / metrics["extract.fingerprint"] / "views").glob("*.json")
    view = read_view(view_file)
    assert view.classes == ["cats", "dogs", "owls"]
    assert sum(sum(c.values()) for c in view.counts().values()) == 12
    assert [s.path for s in view.skipped] == ["owls/bad.png"]


def test_the_view_s_identity_is_recorded_once_and_is_what_earlier_releases_computed(
        tiny_project: Path, monkeypatch):
    import hashlib
    import json

    from pipeline.data import view as view_module

    config = load_config(tiny_project / "stages.yaml")
    run_named(config, "extract")
    (view_file,) = config.cache.dir.glob("*/views/*.json")
    legacy = json.loads(view_file.read_text())  # how locks of earlier releases hashed it
    legacy.pop("created")
    recorded = view_module.digest_file(view_file).read_text().strip()
    assert recorded == hashlib.sha256(json.dumps(legacy, sort_keys=True, default=str)
                                      .encode()).hexdigest()
    # reading the identity parses no view
    monkeypatch.setattr(view_module.json, "loads", lambda *a, **k: pytest.fail("parsed"))
    assert view_module.view_digest(view_file) == recorded
    monkeypatch.undo()
    # a view written without a digest file (an earlier release): computed, the same
    view_module.digest_file(view_file).unlink()
    assert view_module.view_digest(view_file) == recorded
    # other content, another identity; no view, none
    write_image(tiny_project / "data" / "owls" / "new.png", 999)
    run_named(config, "extract")
    assert view_module.view_digest(view_file) not in (None, recorded)
    view_file.unlink()
    assert view_module.view_digest(view_file) is None


@pytest.mark.filterwarnings("ignore::pipeline.errors.SkippedImageWarning")
def test_a_class_with_only_bad_files_is_named(tiny_project: Path):
    from pipeline.errors import EmptyClassWarning
    bad = tiny_project / "data" / "ghosts"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"")
    (bad / "b.png").write_text("nope")
    with pytest.warns(EmptyClassWarning, match="'ghosts' has no usable image"):
        result = _extract(tiny_project)
    assert "ghosts" in result.view.classes and result.new == 12


@pytest.mark.filterwarnings("ignore::pipeline.errors.SkippedImageWarning")
def test_a_transient_decode_failure_is_retried_next_run(tiny_project: Path, monkeypatch):
    import pipeline.data.batches
    real_decode = pipeline.data.batches.decode_file

    def flaky(path, *args, **kwargs):
        if path.name == "img_02.png" and path.parent.name == "dogs":
            raise MemoryError
        return real_decode(path, *args, **kwargs)

    monkeypatch.setattr(pipeline.data.batches, "decode_file", flaky)
    first = _extract(tiny_project)
    assert [s.path for s in first.skipped] == ["dogs/img_02.png"]
    assert first.skipped[0].reason.startswith("decoder error: MemoryError")
    monkeypatch.setattr(pipeline.data.batches, "decode_file", real_decode)
    second = _extract(tiny_project)
    assert (second.new, second.cached, second.skipped) == (1, 11, [])


def test_a_run_that_waited_for_the_lock_uses_what_the_holder_cached(tiny_project: Path,
                                                                    count_inference,
                                                                    monkeypatch):
    import threading

    reference = _extract(tiny_project, "cache.dir=reference")
    shas = sorted({image.sha256 for image in reference.view.images})
    rows = FeatureStore(reference.store_path.parent, reference.fingerprint).get(shas)
    description = FeatureStore(reference.store_path.parent, reference.fingerprint).description
    count_inference["images"] = 0

    # The holder takes the lock first, waits until our run is queued behind it, then caches
    # everything; our run must see that after it gets the lock and infer nothing. (filelock's
    # locks belong to a thread, so the holder lives in one thread from start to end.)
    held, queued = threading.Event(), threading.Event()
    import pipeline.extract._writers as writers
    real_open_writer = writers.open_writer

    def open_writer_after_signalling(*args, **kwargs):
        queued.set()
        return real_open_writer(*args, **kwargs)

    def hold_fill_release():
        store = FeatureStore(tiny_project / "cache", reference.fingerprint)
        with real_open_writer(store, description) as holder:
            held.set()
            queued.wait(timeout=30)
            holder.add(shas, rows)

    thread = threading.Thread(target=hold_fill_release)
    thread.start()
    held.wait(timeout=30)
    monkeypatch.setattr(writers, "open_writer", open_writer_after_signalling)
    with pytest.warns(CacheLockWaitWarning, match="waiting up to 30 s"):
        result = _extract(tiny_project, "cache.lock_timeout=30")
    thread.join()
    assert (result.new, result.cached) == (0, 12)
    assert count_inference["images"] == 0


def test_float16_storage_is_its_own_store_and_serves_the_rounded_features(tiny_project: Path):
    import h5py

    from tests.support.projects import context

    taps = "backbone.taps=[block3_conv3.gap]"
    full = _extract(tiny_project, taps)
    half = _extract(tiny_project, taps, "cache.dtype=float16")
    assert half.fingerprint != full.fingerprint and (half.new, half.cached) == (12, 0)
    exact, stored = context(tiny_project, taps), context(tiny_project, taps, "cache.dtype=float16")
    for part in exact.stores:
        shas = exact.stores[part].sha256s()
        expected = exact.stores[part].get(shas)
        np.testing.assert_array_equal(stored.stores[part].get(shas),
                                      expected.astype(np.float16).astype(np.float32))
        for shard in stored.stores[part].path.glob("*.h5"):
            with h5py.File(shard, "r") as f:
                assert f["features"].dtype == np.float16
        assert stored.stores[part].description["storage"] == "float16"
    # cache ls tells the stores apart by their dtypes: compute/storage
    from pipeline.cache_commands import format_store_list
    rows = format_store_list(exact.config.cache.dir).splitlines()
    assert "dtypes" in rows[1]
    assert {row.split()[0] for row in rows if " f32/f16 " in row} == \
        {store.fingerprint for store in stored.stores.values()}
    assert sum(" f32/f32 " in row for row in rows) == len(exact.stores)
    # heads train on it as on any cache
    run, _ = run_named(load_config(tiny_project / "stages.yaml", [
        taps, "cache.dtype=float16", "cluster.scheduler=synchronous",
        "stages.heads.models={lr: {kind: logistic_regression, "
        "features: [gap, block3_conv3.gap], normalize: power}}"]), "heads")
    assert (run.path / "heads" / "lr" / "head.json").is_file()


def test_augmented_copies_keep_the_cache_keys_of_earlier_releases(monkeypatch):
    # The copies cached by earlier releases (when they were "augmented views") stay valid only
    # while the key, the augmentation id and the seed are computed from the same bytes: the
    # values below are those of the release before the rename.
    from types import SimpleNamespace

    import pipeline.extract.augmented as augmented
    from pipeline.config import AugmentedCopiesConfig
    from pipeline.data.view import DatasetView, augmented_key
    from pipeline.nn.augment import copy_seed

    versions = {"keras": "3.0.0", "tensorflow": "2.16.1"}
    monkeypatch.setattr(augmented, "check_backend", lambda: "tensorflow")
    monkeypatch.setattr(augmented, "metadata", SimpleNamespace(version=versions.__getitem__))
    assert augmented.augmentation_id(AugmentedCopiesConfig(count=2, seed=7)) == \
        "8856a7a2a6a4a738"
    key = augmented_key("ab" * 32, "0123456789abcdef", 3)
    assert key == "b5a93e85be55ecb3f8f11933a1df4fa518f3369d38418bc465187ed37bbfd705"
    assert copy_seed(key) == 900284037
    # a dataset view as earlier releases wrote it names the same copies
    image = {"path": "cats/a.png", "label": "cats", "split": "train", "sha256": "ab" * 32}
    view = DatasetView.from_json({"root": "/data", "classes": ["cats"], "fingerprint": "f",
                                  "images": [image], "format": 1,
                                  "augmented": {"id": "0123456789abcdef", "count": 4}})
    assert [(c.key, c.number) for c in view.augmented_copies()][3] == (key, 3)
    assert view.to_json()["augmented"] == {"id": "0123456789abcdef", "count": 4}


def test_an_image_refused_before_but_cached_since_is_in_the_view(tiny_project: Path):
    """Refused images are asked about apart from the others; one whose features some other
    way reached the cache since (another decoder, another run) counts as cached."""
    from pipeline.config import OUTPUT
    from pipeline.extract._writers import open_writers
    from tests.support.projects import context
    (tiny_project / "data" / "dogs" / "notes.jpg").write_text("a text file")
    with pytest.warns(SkippedImageWarning):
        first = _extract(tiny_project)
    (refused,) = first.skipped
    ctx = context(tiny_project)
    spec = ctx.spec
    with open_writers(ctx, tuple(ctx.stores)) as (_, writers):
        for part, writer in writers.items():
            shape = spec.output_shape if part == OUTPUT else spec.tap_shape(part)
            writer.add([refused.sha256], np.zeros((1, *shape), np.float32))
    again = _extract(tiny_project)
    assert again.skipped == [] and again.cached == 13
    assert refused.path in {image.path for image in again.view.images}


def test_distinct_images_name_the_first_file_of_each_content_and_refuse_unknown_keys():
    from pipeline.data.table import ImageTable, ViewImage
    from pipeline.extract.run import DistinctImages

    a, b = "a" * 64, "b" * 64
    table = ImageTable.from_rows(["cat", "dog"], [
        ViewImage("dog/copy.png", "dog", "train", b), ViewImage("cat/one.png", "cat", "test", a),
        ViewImage("cat/first.png", "cat", "train", b)])
    distinct = DistinctImages(table)
    assert len(distinct) == 2 and distinct.keys() == [b, a]  # first-seen order
    assert distinct.paths_of([a, b], "/root") == {a: "/root/cat/one.png",
                                                   b: "/root/dog/copy.png"}
    assert distinct.paths_of([], "/root") == {}
    with pytest.raises(KeyError):
        distinct.paths_of(["c" * 64], "/root")
    with pytest.raises(KeyError):
        DistinctImages(table[np.zeros(3, bool)]).paths_of([a], "/root")
