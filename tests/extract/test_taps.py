"""Taps: pooled vectors of earlier layers, computed in the same pass as the output, each in a
store of its own: equal to Keras' own pooling of those layers, added and removed without
touching the rest, resumed exactly after a kill, kept alone when the output is not."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from cache import FeatureStore
from pipeline.cli import main
from pipeline.data.view import read_view
from tests.support.projects import (
    REPO,
    context,
    extract,
    make_image_folder,
    tiny_document,
    write_config,
)

TAPS = "backbone.taps=[block3_conv3.gap,block4_conv3.gmp]"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    make_image_folder(tmp_path / "data", {"cats": 4, "dogs": 4, "owls": 4})
    document = tiny_document()
    document["data"]["image_size"] = [64, 64]
    write_config(tmp_path, document)
    return tmp_path


def _files(store: FeatureStore) -> dict[str, str]:
    """sha256 of every shard and of the manifest of ``store``."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(store.path.iterdir())
            if path.name.endswith(".h5") or path.name == "manifest.jsonl"}


def test_taps_equal_keras_own_pooling_of_those_layers(project: Path):
    from pipeline.backbone.model import build_vgg16_base
    from pipeline.data.decode import decode_file
    from pipeline.nn.runtime import keras

    result = extract(project, TAPS)
    ctx = context(project, TAPS)
    view = read_view(result.view_file)
    shas = [image.sha256 for image in view.images]
    pixels = np.stack([decode_file(Path(view.root) / image.path, ctx.spec.decode)
                       for image in view.images]).astype(np.float32)
    base = build_vgg16_base(ctx.spec)
    inputs = keras.applications.vgg16.preprocess_input(pixels.copy())
    for tap, pool in (("block3_conv3.gap", np.mean), ("block4_conv3.gmp", np.max)):
        layer = keras.Model(base.input, base.get_layer(tap.split(".")[0]).output)
        expected = pool(np.asarray(layer(inputs)), axis=(1, 2))
        cached = ctx.stores[tap].get(shas)
        assert cached.shape == (12, 256 if tap.startswith("block3") else 512)
        np.testing.assert_allclose(cached, expected, rtol=1e-5, atol=1e-6)
    assert view.taps == {tap: fp.id for tap, fp in ctx.tap_fingerprints.items()}
    assert ctx.stores["output"].get(shas).shape == (12, 2, 2, 512)


def test_adding_a_tap_computes_only_it_and_leaves_the_output_byte_for_byte(project: Path,
                                                                         monkeypatch):
    import pipeline.backbone.model as model

    first = extract(project)
    output = context(project).store
    before = _files(output)
    built = []
    real = model.build_feature_extractor
    monkeypatch.setattr(model, "build_feature_extractor",
                        lambda spec, parts=None: built.append(parts) or real(spec, parts))
    added = extract(project, "backbone.taps=[block3_conv3.gap]")
    assert built == [("block3_conv3.gap",)]  # the base built to block3 only
    assert (added.new, added.cached) == (12, 0) and added.fingerprint == first.fingerprint
    assert _files(output) == before          # the output's shards and manifest untouched
    ctx = context(project, "backbone.taps=[block3_conv3.gap]")
    assert len(ctx.stores["block3_conv3.gap"]) == 12
    again = extract(project, "backbone.taps=[block3_conv3.gap]")
    assert (again.new, again.cached) == (0, 12) and built == [("block3_conv3.gap",)]


def test_removing_a_tap_loses_nothing_and_adding_it_back_costs_nothing(project: Path):
    extract(project, TAPS)
    fewer = extract(project, "backbone.taps=[block3_conv3.gap]")
    assert list(read_view(fewer.view_file).taps) == ["block3_conv3.gap"]
    back = extract(project, TAPS)
    assert (back.new, back.cached) == (0, 12)
    for store in context(project, TAPS).stores.values():
        assert len(store) == 12 and sum(s.rows for s in store.shards()) == 12


def test_the_output_can_be_left_out_of_the_cache(project: Path, capsys):
    taps_only = [TAPS, "backbone.keep_output=false"]
    result = extract(project, *taps_only)
    ctx = context(project, *taps_only)
    assert set(ctx.stores) == {"block3_conv3.gap", "block4_conv3.gmp"}
    assert len(ctx.store) == 0 and result.view_file.parent.parent == ctx.store.path
    sizes = {tap: sum(p.stat().st_size for p in store.path.glob("*.h5"))
             for tap, store in ctx.stores.items()}
    assert sizes["block4_conv3.gmp"] < 12 * 512 * 4 * 2  # vectors, not (h, w, c) tensors
    assert "the output tensor is not kept" in result.summary()
    assert main(["cache", "ls", "-c", str(project / "stages.yaml")]) == 0
    listing = capsys.readouterr().out
    assert "block4_conv3.gmp" in listing and "3 fingerprint(s), 24 entries" in listing


def test_a_kill_while_taps_are_written_resumes_exactly(project: Path):
    reference = extract(project, TAPS, "cache.dir=reference")
    expected = {part: store.get(store.sha256s()) for part, store in
                context(project, TAPS, "cache.dir=reference").stores.items()}
    assert reference.new == 12
    for fault in ("shard.renamed:4:kill", "manifest.partial:5:kill"):
        cache = f"cache-{fault.split(':')[0]}"
        env = {**os.environ, "PIPELINE_FAULT": fault, "PYTHONPATH": str(REPO)}
        killed = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run", "extract", "--no-progress", "-c",
             str(project / "stages.yaml"), "--set", TAPS, "--set", f"cache.dir={cache}"],
            env=env, capture_output=True, text=True, timeout=300)
        assert killed.returncode == -9, killed.stderr
        resumed = extract(project, TAPS, f"cache.dir={cache}")
        assert resumed.new + resumed.cached == 12
        for part, store in context(project, TAPS, f"cache.dir={cache}").stores.items():
            shas = context(project, TAPS, "cache.dir=reference").stores[part].sha256s()
            assert sum(s.rows for s in store.shards()) == 12, (fault, part)  # each row once
            np.testing.assert_allclose(store.get(shas), expected[part], rtol=1e-5, atol=1e-6)
            assert not list(store.path.glob(".*.tmp"))


def test_verify_and_gc_cover_taps(project: Path, capsys):
    config = ["-c", str(project / "stages.yaml")]
    assert main(["run", "extract", "--no-progress", *config, "--set", TAPS]) == 0
    capsys.readouterr()
    assert main(["cache", "verify", *config]) == 0
    assert "3 damaged" not in capsys.readouterr().out
    (project / "data" / "owls" / "img_00.png").unlink()  # one image leaves the data
    assert main(["run", "extract", "--no-progress", *config, "--set", TAPS]) == 0
    assert main(["cache", "gc", "--apply", *config]) == 0
    out = capsys.readouterr().out
    assert out.count("removed 1 (") == 3  # the output's store and both taps'
    for store in context(project, TAPS).stores.values():
        assert len(store) == 11


def test_a_cache_of_the_previous_format_reads_verifies_and_gets_taps(project: Path, capsys):
    # written by hand in the layout of the release before taps, not by today's writer
    ctx = context(project)
    from pipeline.data.scan import scan_dataset
    shas = [image.sha256 for image in scan_dataset(ctx.config.data).images]
    rng = np.random.default_rng(0)
    features = rng.random((12, *ctx.spec.output_shape), dtype=np.float32)
    folder = ctx.store.path
    folder.mkdir(parents=True)
    (folder / "fingerprint.json").write_text(json.dumps(ctx.fingerprint.description))
    with h5py.File(folder / "shard-000001-0a1b2c3d.h5", "w") as f:
        f.attrs["fingerprint"] = ctx.fingerprint.id
        f.attrs["format"] = 1
        f.attrs["created"] = "2026-11-01T00:00:00+00:00"
        f.create_dataset("features", data=features)
        f.create_dataset("sha256", data=np.array(shas, dtype="S64"))
    import zlib
    line = {"shard": "shard-000001-0a1b2c3d.h5", "sha256": shas,
            "crc32": [zlib.crc32(row.tobytes()) for row in features],
            "bytes": (folder / "shard-000001-0a1b2c3d.h5").stat().st_size,
            "created": "2026-11-01T00:00:00+00:00"}
    (folder / "manifest.jsonl").write_text(json.dumps(line) + "\n")

    store = FeatureStore(ctx.config.cache.dir, ctx.fingerprint.id)
    np.testing.assert_array_equal(store.get(shas), features)
    assert main(["cache", "verify", "-c", str(project / "stages.yaml")]) == 0
    assert "12 entries checked: ok" in capsys.readouterr().out
    result = extract(project, "backbone.taps=[block3_conv3.gap]")
    assert result.new == 12  # the tap, for every image; the old output served as it was
    store.refresh()
    np.testing.assert_array_equal(store.get(shas), features)
