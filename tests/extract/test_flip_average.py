"""backbone.flip_average through the extract stage: what the cache holds for an image and its
left-right mirror, and a flip-averaged cache beside the plain one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from tests.support.projects import context, extract, tiny_document, write_config, write_image

# (2, 4, 512) at block4_pool: the output has positions to line up along the width
SETUP = ["data.image_size=[32,64]", "backbone.output_layer=block4_pool",
         "backbone.taps=[block3_conv3.gap,block4_conv3.gmp]"]


@pytest.fixture
def mirror_pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A project with an image, its mirror as a second file, and two others; (project,
    image, mirror). The images have the input size, so no resize stands between the two."""
    data = tmp_path / "data"
    image = write_image(data / "cats" / "image.png", seed=1, size=(64, 32))
    mirror = data / "cats" / "mirror.png"
    with Image.open(image) as opened:
        opened.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirror)  # PNG: lossless
    write_image(data / "dogs" / "a.png", seed=2, size=(64, 32))
    write_image(data / "dogs" / "b.png", seed=3, size=(64, 32))
    write_config(tmp_path, tiny_document())
    return tmp_path, image, mirror


@pytest.mark.parametrize("flip_average", [True, False])
def test_an_image_and_its_mirror_get_the_same_features_when_flip_averaged(mirror_pair,
                                                                          flip_average):
    project, image, mirror = mirror_pair
    overrides = [*SETUP, f"backbone.flip_average={str(flip_average).lower()}"]
    result = extract(project, *overrides)
    assert result.new == 4
    shas = {Path(i.path).name: i.sha256 for i in result.view.images}
    ctx = context(project, *overrides)
    assert set(ctx.stores) == {"output", "block3_conv3.gap", "block4_conv3.gmp"}
    for part, store in ctx.stores.items():
        ours, theirs = store.get([shas[image.name], shas[mirror.name]])
        if part == "output":
            assert ours.shape == (2, 4, 512)
            theirs = theirs[:, ::-1]  # (h, w, c): mirrored along the width
        difference = np.abs(ours - theirs).max() / np.abs(ours).max()
        if flip_average:
            assert difference < 1e-5, part
        else:
            assert difference > 1e-2, part


def test_run_extract_with_flip_average_caches_beside_the_plain_features(tiny_project: Path,
                                                                        capsys):
    run = ["run", "extract", "-c", str(tiny_project / "stages.yaml"), "--no-progress"]
    flip = ["--set", "backbone.flip_average=true"]
    assert main(run) == 0
    capsys.readouterr()
    assert main([*run, *flip]) == 0  # nothing of the plain cache serves it
    assert "extract: 12 new, 0 cached, 0 skipped" in capsys.readouterr().out
    assert main([*run, *flip]) == 0
    assert "extract: up to date, skipped" in capsys.readouterr().out
    plain, averaged = context(tiny_project).store, context(tiny_project,
                                                           "backbone.flip_average=true").store
    assert plain.fingerprint != averaged.fingerprint
    assert plain.path.parent == averaged.path.parent == tiny_project / "cache"
    assert averaged.description["flip_average"] is True
    assert "flip_average" not in plain.description
    shas = plain.sha256s()
    assert len(shas) == 12 and sorted(averaged.sha256s()) == sorted(shas)
    assert not np.allclose(plain.get(shas), averaged.get(shas))
    # cache ls tells the two stores apart without their fingerprints
    from pipeline.cache_commands import format_store_list
    rows = {row.split()[0]: row for row in format_store_list(plain.path.parent).splitlines()
            if row.startswith("vgg16-")}
    assert " 32x32+flip " in rows[averaged.fingerprint]
    assert " 32x32 " in rows[plain.fingerprint] and "+flip" not in rows[plain.fingerprint]
