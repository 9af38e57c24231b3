"""The hash state: no image is read whose stat is what it was when it was hashed, a changed
file is read again, and a file changed too close to its hashing is never trusted."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from cache.database import INDEX_NAME
from cache.errors import CacheDatabaseWarning
from cache.files import sha256_file
from cache.hashstate import RACY_NS, FileStat, HashState
from pipeline.cli import main
from pipeline.config import DataConfig, load_config
from pipeline.data import scan as scan_module
from pipeline.data.listing import list_data_folder
from pipeline.data.scan import scan_dataset
from tests.support.projects import make_image_folder, tiny_document, write_config

OLD = 1_600_000_000 * 10**9  # a time long before any test runs, in ns


def _age(paths, ns: int = OLD) -> None:
    for path in paths:
        os.utime(path, ns=(ns, ns))


def _old_images(project: Path) -> tuple[list[Path], DataConfig]:
    """3 cats and 3 dogs under ``project/data``, last changed long ago, and the data section
    of the project's stages.yaml."""
    images = make_image_folder(project / "data", {"cats": 3, "dogs": 3})
    _age(images)
    write_config(project, tiny_document())
    return images, load_config(project / "stages.yaml").data


@pytest.fixture
def hashed_files(monkeypatch) -> list[Path]:
    """Every path the scan reads to hash, in the order read (the spy of sha256_file)."""
    read: list[Path] = []
    real = scan_module.sha256_file

    def spy(file):  # a path, or the open file the scan reads
        read.append(Path(getattr(file, "name", file)))
        return real(file)

    monkeypatch.setattr(scan_module, "sha256_file", spy)
    return read


def test_a_record_is_trusted_only_while_the_stat_is_the_same_and_not_racy(tmp_path: Path):
    image = tmp_path / "a.png"
    image.write_bytes(b"one")
    _age([image])
    stat = FileStat.of(image.stat())
    with HashState(tmp_path / "cache") as state:
        assert state.known([(image, stat)]) == {}
        state.record([(image, stat, "a" * 64, time.time_ns())])
        assert state.known([(image, stat)]) == {image: "a" * 64}
        for changed in (stat._replace(size=stat.size + 1),
                        stat._replace(mtime_ns=stat.mtime_ns + 1),
                        stat._replace(ctime_ns=stat.ctime_ns + 1),
                        stat._replace(inode=stat.inode + 1),
                        stat._replace(device=stat.device + 1)):
            assert state.known([(image, changed)]) == {}
        # hashed less than RACY_NS after its last change: it may have changed again unseen
        state.record([(image, stat, "b" * 64, stat.mtime_ns + RACY_NS - 1)])
        assert state.known([(image, stat)]) == {}
        state.record([(image, stat, "b" * 64, stat.mtime_ns + RACY_NS)])
        assert state.known([(image, stat)]) == {image: "b" * 64}
        assert state.forget([image]) == 1 and state.known([(image, stat)]) == {}
    # the state outlives the process that wrote it
    with HashState(tmp_path / "cache") as state:
        state.record([(image, stat, "c" * 64, time.time_ns())])
    with HashState(tmp_path / "cache") as state:
        assert state.known([(image, stat)]) == {image: "c" * 64}


def test_file_names_that_are_not_utf8_are_recorded(tmp_path: Path):
    image = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.png"))
    image.write_bytes(b"x")
    _age([image])
    stat = FileStat.of(image.stat())
    with HashState(tmp_path / "cache") as state:
        state.record([(image, stat, "d" * 64, time.time_ns())])
        assert state.known([(image, stat)]) == {image: "d" * 64}


def test_a_database_that_cannot_be_read_is_set_aside_and_started_afresh(tmp_path: Path):
    (tmp_path / INDEX_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.warns(CacheDatabaseWarning, match="moved aside"):
        state = HashState(tmp_path)
    with state:
        assert state.known([(tmp_path / "x", FileStat(1, 2, 3, 4, 5))]) == {}
    assert len(list(tmp_path.glob(f"{INDEX_NAME}.unreadable-*"))) == 1
    sqlite3.connect(tmp_path / INDEX_NAME).execute("SELECT * FROM file_states").fetchall()


def test_a_second_scan_reads_no_image_and_a_touched_one_is_read_again(tmp_path: Path,
                                                                      hashed_files):
    images, data = _old_images(tmp_path)
    with HashState(tmp_path / "cache") as state:
        first = scan_dataset(data, hash_state=state)
        assert sorted(hashed_files) == sorted(images)
        hashed_files.clear()
        again = scan_dataset(data, hash_state=state)
        assert hashed_files == []
        assert [(i.relpath, i.sha256, i.split) for i in again.images] == \
            [(i.relpath, i.sha256, i.split) for i in first.images]
        _age(images[:1], OLD + 10**9)  # touched: a new time, the same bytes
        images[1].write_bytes(images[2].read_bytes())  # another content, written later
        _age(images[1:2], OLD + 2 * 10**9)
        third = scan_dataset(data, hash_state=state)
        assert sorted(hashed_files) == sorted(images[:2])
        by_path = {Path(i.path): i.sha256 for i in third.images}
        assert by_path[images[0]] == first.images[0].sha256
        assert by_path[images[1]] == by_path[images[2]]
        hashed_files.clear()
        scan_dataset(data, hash_state=state, rehash=True)
        assert sorted(hashed_files) == sorted(images)


def test_a_file_changed_just_before_it_was_hashed_is_hashed_on_every_scan(tmp_path: Path,
                                                                         hashed_files):
    images = make_image_folder(tmp_path / "data", {"cats": 2, "dogs": 2})
    now = time.time_ns()
    _age(images)
    _age(images[:1], now)  # written a moment ago: its next change could keep this time
    write_config(tmp_path, tiny_document())
    data = load_config(tmp_path / "stages.yaml").data
    with HashState(tmp_path / "cache") as state:
        scan_dataset(data, hash_state=state)
        hashed_files.clear()
        scan_dataset(data, hash_state=state)
        scan_dataset(data, hash_state=state)
    assert hashed_files == [images[0], images[0]]


def test_extract_reruns_and_force_read_no_image_and_rehash_reads_them_all(tiny_project: Path,
                                                                          hashed_files,
                                                                          capsys):
    config = str(tiny_project / "stages.yaml")
    _age((tiny_project / "data").rglob("*.png"))
    assert main(["run", "extract", "-c", config, "--no-progress"]) == 0
    assert len(hashed_files) == 12
    hashed_files.clear()
    assert main(["run", "extract", "--force", "-c", config, "--no-progress"]) == 0
    assert hashed_files == []
    assert main(["run", "extract", "--force", "--rehash", "-c", config, "--no-progress"]) == 0
    assert len(hashed_files) == 12
    assert "extract: 0 new, 12 cached" in capsys.readouterr().out
    assert (tiny_project / "cache" / INDEX_NAME).is_file()


def test_the_racy_rule_counts_from_before_the_file_was_read(tmp_path: Path, monkeypatch):
    """A file changed 1.5 s before a read that took 1 s is racy: the time that counts is when
    reading began (the file could have changed again while it was read)."""
    images = make_image_folder(tmp_path / "data", {"cats": 1, "dogs": 1})
    _age(images)
    _age(images[:1], time.time_ns() - 1_500_000_000)
    write_config(tmp_path, tiny_document())
    data = load_config(tmp_path / "stages.yaml").data
    real = scan_module.sha256_file
    read: list[Path] = []

    def slow(file):
        read.append(Path(file.name))
        time.sleep(1.0)
        return real(file)

    monkeypatch.setattr(scan_module, "sha256_file", slow)
    with HashState(tmp_path / "cache") as state:
        scan_dataset(data, hash_state=state, hash_workers=2)
        read.clear()
        monkeypatch.setattr(scan_module, "sha256_file", lambda file: (
            read.append(Path(file.name)), real(file))[1])
        scan_dataset(data, hash_state=state)
    assert read == images[:1]


def test_a_folder_listed_as_before_is_vouched_for_at_once_and_a_change_undoes_that(
        tmp_path: Path, hashed_files, monkeypatch):
    images, data = _old_images(tmp_path)
    asked: list[list[str]] = []
    real_known = HashState.known

    def spied_known(self, files):
        files = list(files)
        asked.append(sorted(Path(path).name for path, _ in files))
        return real_known(self, files)

    monkeypatch.setattr(HashState, "known", spied_known)
    cats = sorted(p for p in images if p.parent.name == "cats")
    with HashState(tmp_path / "cache") as state:

        def folders() -> int:
            return state._db.execute("SELECT COUNT(*) FROM folder_states").fetchone()[0]

        first = scan_dataset(data, hash_state=state)      # hashed long after their last change
        assert folders() == 2
        asked.clear()
        hashed_files.clear()
        again = scan_dataset(data, hash_state=state)
        assert asked == [[]] and hashed_files == []       # no file asked about, none read
        assert again == first

        cats[1].write_bytes(images[-1].read_bytes())      # another content, a later time
        _age(cats[1:2], OLD + 10**9)
        asked.clear()
        changed = scan_dataset(data, hash_state=state)
        assert asked == [[p.name for p in cats]]          # only the changed folder's files
        assert hashed_files == [cats[1]]
        by_path = {Path(i.path): i.sha256 for i in changed.images}
        assert by_path[cats[1]] == by_path[images[-1]] != first.images[1].sha256
        assert folders() == 2                             # cats again, with the new hash

        _age(cats[:1], time.time_ns())                    # changed a moment ago: racy
        hashed_files.clear()
        scan_dataset(data, hash_state=state)
        assert hashed_files == [cats[0]] and folders() == 1
        scan_dataset(data, hash_state=state)              # racy still: read again, not kept
        assert hashed_files == [cats[0], cats[0]] and folders() == 1
        _age(cats[:1])
        scan_dataset(data, hash_state=state)
        assert folders() == 2
        state.forget([cats[0]])
        assert folders() == 1
        state.forget()
        assert folders() == 0


def _rehashed_elsewhere(state_dir: Path, path: Path, sha: str) -> None:
    """What another process's --rehash records when it finds other bytes at the same stat."""
    with HashState(state_dir) as other:
        other.record([(path, FileStat.of(path.stat()), sha, OLD + 10 * 10**9)])


def test_a_record_written_since_keeps_a_folder_from_being_vouched_for(tmp_path: Path,
                                                                      monkeypatch):
    images, data = _old_images(tmp_path)
    cats = sorted(p for p in images if p.parent.name == "cats")
    with HashState(tmp_path / "cache") as state:
        scan_dataset(data, hash_state=state)
        # a record of other bytes at the same stat drops the folder's: the next scan sees it
        _rehashed_elsewhere(tmp_path / "cache", cats[0], "f" * 64)
        by_path = {Path(i.path): i.sha256 for i in scan_dataset(data, hash_state=state).images}
        assert by_path[cats[0]] == "f" * 64

        # the same written while a scan hashes another file of the folder: that scan must
        # not vouch for the folder with what it read before
        (tmp_path / "data" / "cats" / "new.png").write_bytes(images[-1].read_bytes())
        _age([tmp_path / "data" / "cats" / "new.png"])
        real = scan_module.sha256_file

        def meanwhile(path):
            _rehashed_elsewhere(tmp_path / "cache", cats[1], "e" * 64)
            return real(path)

        monkeypatch.setattr(scan_module, "sha256_file", meanwhile)
        scan_dataset(data, hash_state=state)
        monkeypatch.setattr(scan_module, "sha256_file", real)
        by_path = {Path(i.path): i.sha256 for i in scan_dataset(data, hash_state=state).images}
        assert by_path[cats[1]] == "e" * 64


def test_a_labels_table_asking_about_other_files_of_a_folder_is_not_served_the_old_ones(
        tmp_path: Path):
    images = make_image_folder(tmp_path / "data", {"cats": 3})
    _age(images)
    cats = sorted(images)
    table = tmp_path / "labels.csv"
    document = tiny_document()
    document["data"]["labels"] = "labels.csv"
    write_config(tmp_path, document)
    content = {p: sha256_file(p) for p in cats}
    assert len(set(content.values())) == 3
    with HashState(tmp_path / "cache") as state:
        for rows in ([cats[0], cats[1]], [cats[0], cats[2]], [cats[2], cats[0]]):
            table.write_text("path,label\n" + "".join(f"cats/{p.name},cat\n" for p in rows))
            data = load_config(tmp_path / "stages.yaml").data
            for _ in range(2):   # the second scan is the one a folder record could answer
                scan = scan_dataset(data, hash_state=state,
                                    listing=list_data_folder(tmp_path / "data"))
                assert [(Path(i.path), i.sha256) for i in scan.images] == \
                    [(p, content[p]) for p in rows]


def test_a_hash_of_other_bytes_than_the_stat_listed_serves_the_run_unrecorded(
        tmp_path: Path, hashed_files: list[Path]):
    # a hasher elsewhere (a cluster's worker) that read a file of another size or mtime than
    # the one listed here (another mount, a write in between): its hash is this run's only
    images, data = _old_images(tmp_path)
    real = scan_module.hash_in_threads(2)

    def elsewhere(paths):
        return [found._replace(mtime_ns=found.mtime_ns + 1) if found.path == str(images[0])
                else found for found in real(paths)]

    with HashState(tmp_path / "cache") as state:
        first = scan_dataset(data, hash_state=state, hash_files=elsewhere)
        hashed_files.clear()
        again = scan_dataset(data, hash_state=state)
    assert hashed_files == images[:1]                      # the others were recorded
    assert [i.sha256 for i in again.images] == [i.sha256 for i in first.images]


def test_hashes_made_before_an_interruption_are_kept_and_a_path_never_answered_is_named(
        tmp_path: Path, hashed_files: list[Path]):
    images, data = _old_images(tmp_path)
    real = scan_module.hash_in_threads(1)

    def interrupted(paths):
        yield from real(paths[:2])
        raise KeyboardInterrupt

    with HashState(tmp_path / "cache") as state:
        with pytest.raises(KeyboardInterrupt):
            scan_dataset(data, hash_state=state, hash_files=interrupted)
        hashed_files.clear()
        scan_dataset(data, hash_state=state)
    assert hashed_files == images[2:]                      # the first two were kept
    with HashState(tmp_path / "other") as state:
        unanswered = scan_dataset(data, hash_state=state, hash_files=lambda paths: real(paths[1:]))
    assert [(u.relpath, u.reason) for u in unanswered.unreadable] == \
        [("cats/" + images[0].name, "unreadable: no hash came back for it")]
