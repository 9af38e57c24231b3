"""The entry index answers what the manifest would, without reading every entry; it follows the
journal as it grows or is rewritten, and falls back to the journal where it cannot answer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import cache.index as index_module
import cache.reader as reader_module
from cache import FeatureStore, open_writer
from cache.database import INDEX_NAME
from cache.errors import CacheIndexedWarning, InjectedFault
from cache.faults import inject
from cache.index import EntryIndex
from cache.manifest import MANIFEST_NAME, load_manifest

DESCRIPTION = {"kind": "test"}


def _rows(n: int, start: int = 0) -> tuple[list[str], np.ndarray]:
    shas = [f"{i:064x}" for i in range(start, start + n)]
    rng = np.random.default_rng(start)
    return shas, rng.standard_normal((n, 2, 3)).astype(np.float32)


def _write(store: FeatureStore, shas, features, shard_rows: int = 4) -> None:
    with open_writer(store, DESCRIPTION, shard_rows=shard_rows) as writer:
        writer.add(shas, features)
    store.refresh()


def _as_manifest_says(store: FeatureStore, asked: list[str]) -> tuple[list, dict]:
    manifest = load_manifest(store.path)
    missing = list(dict.fromkeys(s for s in asked if s not in manifest.entries))
    return missing, {s: manifest.entries[s] for s in asked if s in manifest.entries}


def test_a_writer_leaves_the_index_up_to_date(tmp_path: Path):
    store = FeatureStore(tmp_path, "fp")
    shas, features = _rows(10)
    _write(store, shas, features)
    with EntryIndex(store.path) as index:
        assert index.sync() == 0 and index.count() == 10


def test_the_index_answers_as_the_manifest_and_follows_appends(tmp_path: Path, monkeypatch):
    store = FeatureStore(tmp_path, "fp")
    shas, features = _rows(10)
    _write(store, shas, features)
    more, more_features = _rows(6, start=100)
    asked = [shas[3], more[0], shas[3], "f" * 64, shas[9]]
    assert store.missing(asked) == [more[0], "f" * 64]
    _write(store, more, more_features)   # the journal grows: only the new lines are read
    expected_missing, located = _as_manifest_says(store, asked)
    monkeypatch.setattr(reader_module, "load_manifest",
                        lambda folder: pytest.fail("read the whole manifest"))
    fresh = FeatureStore(tmp_path, "fp")
    assert fresh.missing(asked) == expected_missing == ["f" * 64]
    assert fresh.locate([shas[3], more[0]]) == [located[shas[3]], located[more[0]]]
    assert len(fresh) == 16 and more[5] in fresh and "f" * 64 not in fresh
    assert fresh.sha256s() == [*shas, *more]
    np.testing.assert_array_equal(fresh.get([more[2], shas[0]]),
                                  np.stack([more_features[2], features[0]]))
    with EntryIndex(store.path) as index:
        assert index.sync() == 0   # up to date: nothing read


def test_a_rewritten_journal_is_indexed_again(tmp_path: Path):
    store = FeatureStore(tmp_path, "fp")
    shas, features = _rows(12)
    _write(store, shas, features)
    assert len(store) == 12
    with open_writer(store, DESCRIPTION, shard_rows=4) as writer:   # gc
        writer.remove_entries(shas[:5])
    store.refresh()
    assert store.missing(shas) == shas[:5]
    assert len(store) == 7 and store.sha256s() == list(load_manifest(store.path).entries)
    np.testing.assert_array_equal(store.get(shas[5:]), features[5:])


def test_a_line_being_written_waits_and_a_torn_line_is_skipped(tmp_path: Path):
    store = FeatureStore(tmp_path, "fp")
    shas, features = _rows(8)
    _write(store, shas, features)
    journal = store.path / MANIFEST_NAME
    whole = journal.read_bytes()
    first, second = whole.splitlines(keepends=True)
    journal.write_bytes(first + second[:40])   # the second line half written (same inode)
    with EntryIndex(store.path) as index:
        index.reindex()
        assert index.count() == 4
        with open(journal, "ab") as fh:   # ... and then finished
            fh.write(second[40:])
        assert index.sync() == 1 and index.count() == 8
        with open(journal, "ab") as fh:   # a line torn by a crash, then a good one glued on
            fh.write(b'{"shard": "x", "sha2\n')
        assert index.sync() == 1 and index.count() == 8


def test_where_the_index_cannot_answer_exactly_the_manifest_does(tmp_path: Path):
    store = FeatureStore(tmp_path, "fp")
    shas, features = _rows(8)
    _write(store, shas, features)
    ((gone, _),) = store.locate([shas[0]])
    (store.path / gone).unlink()   # a shard deleted by hand: its entries are missing
    store.refresh()
    assert store.missing(shas) == shas[:4] and len(store) == 4
    # a shard complete on disk but not yet in the journal (a crash): its entries count
    store2 = FeatureStore(tmp_path, "fp2")
    _write(store2, shas, features)
    journal = store2.path / MANIFEST_NAME
    rewritten = journal.with_suffix(".tmp")   # a new file, as a rewrite makes
    rewritten.write_bytes(journal.read_bytes().splitlines(keepends=True)[0])
    os.replace(rewritten, journal)
    store2.refresh()
    assert store2.missing(shas) == [] and len(store2) == 8
    assert store2.stats().unlisted_shards == 1


def test_a_crash_while_indexing_leaves_the_index_as_it_was(tmp_path: Path):
    store = FeatureStore(tmp_path, "fp")
    shas, features = _rows(12)
    _write(store, shas, features)
    assert store.missing(shas) == []   # indexed, then the index is lost
    (tmp_path / INDEX_NAME).unlink()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"{INDEX_NAME}{suffix}").unlink(missing_ok=True)
    inject("index.ingest:2:raise")
    try:
        with pytest.raises(InjectedFault):
            FeatureStore(tmp_path, "fp").missing(shas)
    finally:
        inject(None)
    with EntryIndex(store.path) as index:
        assert index.count() == 0   # the transaction was rolled back
    assert FeatureStore(tmp_path, "fp").missing(shas) == []


def test_a_large_store_from_before_the_index_is_indexed_once_with_a_warning(tmp_path: Path,
                                                                          monkeypatch):
    store = FeatureStore(tmp_path, "fp")
    shas, features = _rows(12)
    _write(store, shas, features)
    for suffix in ("", "-wal", "-shm"):   # as an earlier release left the cache
        (tmp_path / f"{INDEX_NAME}{suffix}").unlink(missing_ok=True)
    monkeypatch.setattr(index_module, "ANNOUNCE_ENTRIES", 10)
    with pytest.warns(CacheIndexedWarning, match="indexed its 12 entries"):
        assert FeatureStore(tmp_path, "fp").missing(shas) == []
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(FeatureStore(tmp_path, "fp")) == 12   # once


def test_a_cache_folder_the_index_cannot_be_written_in_is_read_from_the_journal(
        tmp_path: Path, monkeypatch):
    store = FeatureStore(tmp_path, "fp")
    shas, features = _rows(8)
    _write(store, shas, features)
    monkeypatch.setattr(reader_module, "open_index", lambda folder: None)
    fresh = FeatureStore(tmp_path, "fp")
    assert fresh.missing([*shas, "f" * 64]) == ["f" * 64] and len(fresh) == 8


def test_a_journal_rewritten_under_the_same_inode_is_indexed_again(tmp_path: Path):
    """A rewrite makes a new file, but the file system may give it the inode of the one it
    replaced: the bytes before where indexing stopped tell the two apart."""
    store = FeatureStore(tmp_path, "fp")
    shas, features = _rows(8)
    _write(store, shas, features)
    more, more_features = _rows(4, start=50)
    other = FeatureStore(tmp_path, "other")
    _write(other, more, more_features)
    journal = store.path / MANIFEST_NAME
    first, second = journal.read_bytes().splitlines(keepends=True)
    (extra,) = (other.path / MANIFEST_NAME).read_bytes().splitlines(keepends=True)
    inode = journal.stat().st_ino
    with open(journal, "r+b") as fh:   # other lines, longer, in the same file
        fh.write(second + first + extra)
    assert journal.stat().st_ino == inode
    with EntryIndex(store.path) as index:
        assert index.sync() == 3
        assert index.sha256s() == [*shas[4:], *shas[:4], *more]


def test_a_reader_that_opened_the_journal_before_gc_replaced_it_indexes_nothing(tmp_path: Path):
    store = FeatureStore(tmp_path, "fp")
    shas, features = _rows(12)
    _write(store, shas, features)
    index = EntryIndex(store.path)
    stale = open(store.path / MANIFEST_NAME, "rb")   # a reader, just before gc
    try:
        with open_writer(store, DESCRIPTION, shard_rows=4) as writer:
            writer.remove_entries(shas[:8])   # rewrites the journal; its close syncs the index
        assert index._ingest(stale, again=False) is None   # not the journal any more
        assert sorted(index.locate(shas)) == sorted(shas[8:])
    finally:
        stale.close()
        index.close()


def test_damage_recorded_changes_the_store_s_version(tmp_path: Path):
    from cache.manifest import DamagedEntry, write_damaged

    store = FeatureStore(tmp_path, "fp")
    shas, features = _rows(8)
    _write(store, shas, features)
    clean = store.version()
    ((shard, row),) = store.locate([shas[0]])
    write_damaged(store.path, [DamagedEntry(shas[0], shard, row, "checksum mismatch")])
    one = store.version()
    write_damaged(store.path, [DamagedEntry(shas[1], shard, row + 1, "checksum mismatch")])
    assert len({clean, one, store.version()}) == 3


def test_a_damaged_index_is_worked_around_and_never_serves_another_row(tmp_path: Path):
    import sqlite3

    from cache.errors import CacheError

    store = FeatureStore(tmp_path, "fp")
    shas, features = _rows(8)
    _write(store, shas, features)
    # an index that points an image at another row: the shard's own sha256 column says no
    db = sqlite3.connect(tmp_path / INDEX_NAME)
    db.execute("UPDATE entries SET row = (row + 1) % 4 WHERE sha256 = ?", (shas[0],))
    db.commit()
    db.close()
    with pytest.raises(CacheError, match="holds another image than the index says"):
        FeatureStore(tmp_path, "fp").get([shas[0]])
    # pages of the database overwritten: a query fails half-way, the journal answers
    index = tmp_path / INDEX_NAME
    data = bytearray(index.read_bytes())
    data[4096:] = b"\xff" * (len(data) - 4096)
    index.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"{INDEX_NAME}{suffix}").unlink(missing_ok=True)
    fresh = FeatureStore(tmp_path, "fp")
    assert fresh.missing([*shas, "f" * 64]) == ["f" * 64]
    np.testing.assert_array_equal(fresh.get(shas[3:5]), features[3:5])


def test_missing_answers_the_same_by_one_pass_and_by_lookups(tmp_path: Path, monkeypatch):
    store = FeatureStore(tmp_path, "fp")
    shas, features = _rows(40)
    _write(store, shas, features)
    index = store._fast().index
    few = [shas[3], "e" * 64, shas[3], shas[7]]            # 3 keys of 40 entries: lookups
    many = ["f" * 64, *shas[::2], "e" * 64, shas[0]]       # 22 keys: one pass over the keys
    passes = []
    execute = index._db.execute

    class Spied:
        def execute(self, sql, *args):
            passes.append("IN (" not in sql and sql.startswith("SELECT sha256"))
            return execute(sql, *args)

    monkeypatch.setattr(index, "_db", Spied())
    assert index.missing(few) == ["e" * 64]
    assert not any(passes)
    assert index.missing(many) == ["f" * 64, "e" * 64]
    assert any(passes)
    monkeypatch.setattr(index_module, "SCAN_LIMIT", 10)  # too many entries to hold: lookups
    passes.clear()
    assert index.missing(many) == ["f" * 64, "e" * 64] and not any(passes)


def test_a_complete_ask_is_remembered_until_the_journal_moves(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(index_module, "REMEMBERED_KEYS", 4)
    store = FeatureStore(tmp_path, "fp")
    shas, features = _rows(12)
    _write(store, shas, features)
    assert store.missing(shas) == []          # all there: remembered
    statements: list[str] = []

    def entries_read() -> bool:
        return any("FROM entries" in sql for sql in statements)

    with EntryIndex(store.path) as index:
        index._db.set_trace_callback(statements.append)
        assert index.missing(shas) == [] and not entries_read()   # the memo answers
        # other keys, or the same in another order, or too few to remember: looked up
        for asked, absent in ((shas[:6] + ["f" * 64], ["f" * 64]), (shas[::-1], []),
                              (shas[:3], [])):
            statements.clear()
            assert index.missing(asked) == absent and entries_read()
        # a miss is never remembered
        statements.clear()
        assert index.missing(shas[:6] + ["f" * 64]) == ["f" * 64] and entries_read()

    more, more_features = _rows(4, start=100)
    _write(store, more, more_features)        # the journal grows: the memo's state is gone
    with EntryIndex(store.path) as index:
        index._db.set_trace_callback(statements.append)
        statements.clear()
        assert index.missing(shas) == [] and entries_read()
    with open_writer(store, DESCRIPTION, shard_rows=4) as writer:   # gc
        writer.remove_entries(shas[:2])
    store.refresh()
    assert store.missing(shas) == shas[:2]     # a memo of before gc cannot answer
    with EntryIndex(store.path) as index:
        memos = index._db.execute("SELECT COUNT(*) FROM present_sets").fetchone()[0]
    assert memos <= 1                          # those of earlier journal states are dropped


@pytest.mark.parametrize("together", [1, 5, 10_000])
def test_an_image_two_journal_lines_list_is_located_in_the_first(tmp_path: Path, monkeypatch,
                                                                together: int):
    # entries are inserted in batches sorted by key: of two for one image, the journal's first
    # must still be the one the index keeps, in one batch or across two
    from cache.manifest import append_shard
    from cache.shard import write_shard

    monkeypatch.setattr(index_module, "_INSERTED_TOGETHER", together)
    store = FeatureStore(tmp_path, "fp")
    store.path.mkdir()
    shas, features = _rows(9)
    first = write_shard(store.path, "shard-pz-000.h5", "fp", shas[5:], features[5:])
    second = write_shard(store.path, "shard-pa-000.h5", "fp", shas[:6], features[:6])
    manifest = load_manifest(store.path)
    append_shard(store.path, manifest, first)
    append_shard(store.path, manifest, second)   # lists shas[5] again, on its last row
    with EntryIndex(store.path) as index:
        index.sync()
        assert index.count() == 9
        assert index.locate(shas) == {sha: manifest.entries[sha] for sha in shas}
        assert index.locate([shas[5]]) == {shas[5]: ("shard-pz-000.h5", 0)}
