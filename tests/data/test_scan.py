"""Finding images, identifying them by content, splitting them, and reporting duplicates."""

from __future__ import annotations

import shutil
import warnings
from collections import Counter
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.data.scan import scan_dataset, split_for, warn_about
from pipeline.errors import DataError, DuplicateImageWarning, EmptyClassWarning, LeakageWarning
from tests.support.projects import make_image_folder, tiny_document, write_config, write_image


def _scan(project: Path):
    return scan_dataset(load_config(project / "stages.yaml").data)


def test_finds_every_image_format_in_sorted_order(tmp_path: Path):
    write_config(tmp_path, tiny_document())
    data = tmp_path / "data"
    for i, name in enumerate(["b.JPG", "a.jpeg", "c.png", "d.bmp", "e.gif", "sub/f.png"]):
        write_image(data / "zebra" / name, i, fmt={"JPG": "JPEG", "jpeg": "JPEG"}.get(
            name.rsplit(".", 1)[1]))
    (data / "zebra" / "notes.txt").write_text("not an image")
    (data / "zebra" / ".hidden.png").write_bytes(b"")
    write_image(data / "ant" / "x.png", 99)
    scan = _scan(tmp_path)
    assert scan.classes == ["ant", "zebra"]
    assert [i.relpath for i in scan.images] == [
        "ant/x.png", "zebra/a.jpeg", "zebra/b.JPG", "zebra/c.png", "zebra/d.bmp", "zebra/e.gif",
        "zebra/sub/f.png"]
    assert all(len(i.sha256) == 64 for i in scan.images)
    assert not scan.split_folders


def test_split_folders_are_used_as_given(tmp_path: Path):
    write_config(tmp_path, tiny_document())
    for split in ("train", "validation", "test"):
        make_image_folder(tmp_path / "data" / split, {"cats": 2, "dogs": 1},
                          start_seed=hash(split) % 1000)
    scan = _scan(tmp_path)
    assert scan.split_folders
    assert scan.counts() == {s: {"cats": 2, "dogs": 1} for s in ("train", "validation", "test")}


def test_mixing_split_and_class_folders_is_an_error(tmp_path: Path):
    write_config(tmp_path, tiny_document())
    make_image_folder(tmp_path / "data" / "train", {"cats": 1})
    make_image_folder(tmp_path / "data", {"dogs": 1})
    with pytest.raises(DataError, match="split folders"):
        _scan(tmp_path)


def test_no_class_folders_is_an_error(tmp_path: Path):
    write_config(tmp_path, tiny_document())
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        _scan(tmp_path)


def test_split_is_deterministic_and_stable_when_images_are_added(tmp_path: Path):
    write_config(tmp_path, tiny_document())
    make_image_folder(tmp_path / "data", {"cats": 30, "dogs": 30})
    before = {i.relpath: i.split for i in _scan(tmp_path).images}
    assert before == {i.relpath: i.split for i in _scan(tmp_path).images}
    make_image_folder(tmp_path / "data", {"cats": 0, "dogs": 0, "newts": 20}, start_seed=500)
    for i in range(30, 50):
        write_image(tmp_path / "data" / "cats" / f"img_{i:02d}.png", 1000 + i)
    after = {i.relpath: i.split for i in _scan(tmp_path).images}
    assert len(after) == 100
    assert {k: after[k] for k in before} == before


def test_split_fractions_hold_per_class_and_follow_the_seed():
    shas = [f"{i:064x}" for i in range(6000)]
    counts = Counter(split_for(s, (0.7, 0.15, 0.15), seed=0) for s in shas)
    assert abs(counts["train"] / 6000 - 0.7) < 0.03
    assert abs(counts["validation"] / 6000 - 0.15) < 0.03
    other_seed = [split_for(s, (0.7, 0.15, 0.15), seed=1) for s in shas[:200]]
    assert other_seed != [split_for(s, (0.7, 0.15, 0.15), seed=0) for s in shas[:200]]
    assert {split_for(s, (1.0, 0.0, 0.0), seed=0) for s in shas[:100]} == {"train"}


def test_renamed_image_keeps_its_content_hash_and_split(tiny_project: Path):
    before = {i.sha256: i.split for i in _scan(tiny_project).images}
    src = tiny_project / "data" / "cats" / "img_00.png"
    src.rename(src.with_name("renamed.png"))
    after = {i.relpath: (i.sha256, i.split) for i in _scan(tiny_project).images}
    sha, split = after["cats/renamed.png"]
    assert before[sha] == split


def test_duplicates_across_classes_are_reported_by_name(tiny_project: Path):
    shutil.copy(tiny_project / "data" / "cats" / "img_00.png",
                tiny_project / "data" / "dogs" / "copy_of_cat.png")
    scan = _scan(tiny_project)
    (group,) = scan.duplicates
    assert group.kind == "conflicting-labels"
    assert set(group.paths) == {"cats/img_00.png", "dogs/copy_of_cat.png"}
    with pytest.warns(DuplicateImageWarning, match="dogs/copy_of_cat.png"):
        warn_about(scan)


def test_same_bytes_in_two_split_folders_is_leakage(tmp_path: Path):
    write_config(tmp_path, tiny_document())
    make_image_folder(tmp_path / "data" / "train", {"cats": 2})
    make_image_folder(tmp_path / "data" / "test", {"cats": 1}, start_seed=50)
    shutil.copy(tmp_path / "data" / "train" / "cats" / "img_01.png",
                tmp_path / "data" / "test" / "cats" / "leaked.png")
    scan = _scan(tmp_path)
    (group,) = scan.duplicates
    assert group.kind == "leakage"
    with pytest.warns(LeakageWarning, match="test/cats/leaked.png"):
        warn_about(scan)


def test_copies_within_one_class_share_a_split_so_they_never_leak(tiny_project: Path):
    shutil.copy(tiny_project / "data" / "cats" / "img_00.png",
                tiny_project / "data" / "cats" / "again.png")
    scan = _scan(tiny_project)
    (group,) = scan.duplicates
    assert group.kind == "copy"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_about(scan)  # a plain copy is listed, not warned about


def test_empty_class_folder_is_warned_about(tiny_project: Path):
    (tiny_project / "data" / "empty").mkdir()
    scan = _scan(tiny_project)
    assert "empty" in scan.classes
    with pytest.warns(EmptyClassWarning, match="'empty'"):
        warn_about(scan)


def test_symlink_loop_does_not_trap_the_scan(tiny_project: Path):
    (tiny_project / "data" / "cats" / "loop").symlink_to(tiny_project / "data" / "cats")
    assert len(_scan(tiny_project).images) == 12


def test_unreadable_folder_is_named(tiny_project: Path, monkeypatch):
    import errno
    import os

    real_scandir = os.scandir

    def scandir_without_permission(path="."):
        # Root reads every folder, so simulate what listing one it may not read raises.
        if Path(path).name == "private":
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir_without_permission)
    (tiny_project / "data" / "private").mkdir()
    scan = _scan(tiny_project)
    assert [(u.relpath, u.reason) for u in scan.unreadable] == [
        ("private/", "unreadable folder: Permission denied")]
