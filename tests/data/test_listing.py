"""The data folder is walked once per command: the lock's record of it and the scan both read
that one listing, and the lock's record is what earlier releases computed."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

import pipeline.context
from cache.files import sha256_text
from cache.hashstate import FileStat
from pipeline.cli import main
from pipeline.data.listing import list_data_folder
from tests.support.projects import write_image


def _listing_as_earlier_releases_computed_it(root: Path) -> dict:
    """The lock's record of a data folder before the listing was shared: os.walk with sorted
    folders and files, a stat per file (failures left out), JSON of (relative path, size,
    mtime_ns) with sorted keys, its sha256."""
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            try:
                info = os.stat(path)
            except OSError:
                continue
            entries.append((os.path.relpath(path, root), info.st_size, info.st_mtime_ns))
    return {"files": len(entries),
            "hash": sha256_text(json.dumps(entries, sort_keys=True, default=str))}


def _awkward_folder(root: Path) -> Path:
    for name in ("b/z.png", "b/a.png", "a/deep/er/x.png", "a/y.png", ".hidden/h.png"):
        write_image(root / name, len(name))
    (root / "top.txt").write_text("not in a class")
    (root / "é-ünïcode.txt").write_text("x")
    (root / "a" / "dangling.png").symlink_to(root / "nowhere.png")   # stat fails: left out
    (root / "linked").symlink_to(root / "b", target_is_directory=True)  # not descended
    return root


def test_the_listing_s_record_is_the_one_earlier_releases_computed(tmp_path: Path):
    root = _awkward_folder(tmp_path / "data")
    listing = list_data_folder(root)
    assert listing.summary == _listing_as_earlier_releases_computed_it(root)
    assert listing.summary["files"] == 7
    assert list_data_folder(str(root) + os.sep).summary == listing.summary
    os.utime(root / "a" / "y.png", ns=(1, 2))
    assert list_data_folder(root).summary["hash"] != listing.summary["hash"]


def test_the_listing_keeps_each_file_s_stat_as_the_hash_state_compares_it(tmp_path: Path):
    root = _awkward_folder(tmp_path / "data")
    os.mkfifo(root / "b" / "pipe.png")
    listing = list_data_folder(root)
    seen = {}
    for folder, name, position in listing.files():
        path = os.path.join(folder, name)
        try:
            seen[os.path.relpath(path, root)] = listing.stat_at(position)
        except OSError as exc:
            seen[os.path.relpath(path, root)] = exc.errno
        assert listing.position_of(path) == position
    assert seen["a/y.png"] == FileStat.of(os.stat(root / "a" / "y.png"))
    assert seen["b/pipe.png"] is None                  # not a regular file
    assert seen["a/dangling.png"] == errno.ENOENT      # the stat failed
    assert "linked/a.png" not in seen and listing.position_of(str(root / "nowhere")) is None


def test_a_command_walks_the_data_folder_once_and_stats_each_image_once(
        tiny_project: Path, monkeypatch, capsys):
    config_file = str(tiny_project / "stages.yaml")
    assert main(["run", "extract", "-c", config_file, "--no-progress"]) == 0
    write_image(tiny_project / "data" / "owls" / "new.png", 777)   # stale: checked, then run
    walks, stats = [], []
    real_listing = pipeline.context.list_data_folder
    data = str(tiny_project / "data")

    def counted_listing(root):
        walks.append(root)
        return real_listing(root)

    real_stat = os.stat

    def counted_stat(path, *args, **kwargs):
        if os.fspath(path).startswith(data):
            stats.append(os.fspath(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(pipeline.context, "list_data_folder", counted_listing)
    monkeypatch.setattr(os, "stat", counted_stat)
    assert main(["run", "extract", "-c", config_file, "--no-progress"]) == 0
    assert "1 new, 12 cached" in capsys.readouterr().out
    assert len(walks) == 1
    images = [p for p in stats if p.endswith(".png")]
    assert len(images) == 13 and len(set(images)) == 13


@pytest.mark.parametrize("private", ["private", "cats/private"])
def test_an_unreadable_folder_is_reported_from_the_listing(tiny_project: Path, monkeypatch,
                                                           private: str):
    from pipeline.config import load_config
    from pipeline.data.scan import scan_dataset
    real_scandir = os.scandir

    def scandir_without_permission(path="."):
        if os.fspath(path).endswith(private):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    (tiny_project / "data" / private).mkdir()
    monkeypatch.setattr(os, "scandir", scandir_without_permission)
    data = load_config(tiny_project / "stages.yaml").data
    listing = list_data_folder(data.root)
    scan = scan_dataset(data, listing=listing)
    assert [(u.relpath, u.reason) for u in scan.unreadable] == [
        (f"{private}/", "unreadable folder: Permission denied")]
    assert len(scan.images) == 12


def test_folders_the_listing_does_not_walk_are_scanned_as_before(tmp_path: Path):
    """A symlinked class folder (the walk does not descend symlinks) is walked by the scan on
    its own; a labels table's path through a symlinked folder is stat'ed directly."""
    from pipeline.config import load_config
    from pipeline.data.scan import scan_dataset
    from tests.support.projects import tiny_document, write_config
    elsewhere = tmp_path / "elsewhere"
    for name in ("b.png", "sub/a.png", ".hidden/x.png"):
        write_image(elsewhere / name, len(name))
    data = tmp_path / "data"
    write_image(data / "cats" / "c.png", 1)
    (data / "dogs").symlink_to(elsewhere, target_is_directory=True)
    write_config(tmp_path, tiny_document())
    config = load_config(tmp_path / "stages.yaml")
    scan = scan_dataset(config.data, listing=list_data_folder(data))
    assert [(i.relpath, i.label) for i in scan.images] == [
        ("cats/c.png", "cats"), ("dogs/b.png", "dogs"), ("dogs/sub/a.png", "dogs")]
    assert scan == scan_dataset(config.data)   # with or without the command's listing

    (tmp_path / "labels.csv").write_text("path,label\ncats/c.png,x\ndogs/sub/a.png,y\n")
    document = tiny_document()
    document["data"]["labels"] = "labels.csv"
    write_config(tmp_path, document)
    config = load_config(tmp_path / "stages.yaml")
    scan = scan_dataset(config.data, listing=list_data_folder(data))
    assert [(i.relpath, i.label, i.size) for i in scan.images] == [
        ("cats/c.png", "x", (data / "cats" / "c.png").stat().st_size),
        ("dogs/sub/a.png", "y", (elsewhere / "sub" / "a.png").stat().st_size)]
