"""StoreRows: a fixed list of images located and checked once, read many times by position."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from cache import CacheError, FeatureStore, MissingFeaturesError, open_writer
from cache.shard import read_rows_at, read_shard_layout


def _store(tmp_path: Path, n: int = 40, shard_rows: int = 16, shape=(2, 2, 3), **extra):
    store = FeatureStore(tmp_path, "fp")
    shas = [f"{i:064x}" for i in range(n)]
    features = np.random.default_rng(0).standard_normal((n, *shape)).astype(np.float32)
    with open_writer(store, {"architecture": "test", "output_shape": list(shape), **extra},
                     shard_rows=shard_rows) as writer:
        writer.add(shas, features)
    store.refresh()
    return store, shas, features


def test_rows_read_by_position_in_any_order_equal_get(tmp_path: Path):
    store, shas, features = _store(tmp_path)
    wanted = [shas[i] for i in (39, 3, 17, 0, 22)]     # three shards, not in storage order
    rows = store.rows(wanted)
    assert len(rows) == 5
    np.testing.assert_array_equal(rows.read([0, 1, 2, 3, 4]), store.get(wanted))
    np.testing.assert_array_equal(rows.read([4, 4, 1]), features[[22, 22, 3]])
    assert rows.read([]).shape == (0, 2, 2, 3)
    # storage order: by shard, then row
    assert [wanted[i] for i in rows.storage_order()] == [shas[i] for i in (0, 3, 17, 22, 39)]


def test_sparse_and_dense_rows_of_one_shard_read_alike(tmp_path: Path):
    # rows of 16 KB: rows two apart are read apart, neighbours in one read
    store, shas, features = _store(tmp_path, n=64, shard_rows=64, shape=(4, 4, 256))
    rows = store.rows(shas)
    picked = np.array([63, 0, 1, 2, 30, 32, 33, 60])
    np.testing.assert_array_equal(rows.read(picked), features[picked])
    layout, sha256 = read_shard_layout(next(store.path.glob("*.h5")))
    assert layout.offset is not None and layout.row_bytes == 16 * 1024
    assert [s.decode() for s in sha256] == shas


def test_float16_rows_are_widened_exactly(tmp_path: Path):
    store, shas, features = _store(tmp_path, storage="float16")
    got = store.rows(shas).read(np.arange(40)[::-1])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, features[::-1].astype(np.float16).astype(np.float32))


def test_a_shard_hdf5_keeps_chunked_and_compressed_is_read_through_hdf5(tmp_path: Path):
    path = tmp_path / "shard-000001-other.h5"
    features = np.arange(60, dtype=np.float32).reshape(10, 2, 3)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features, chunks=(4, 2, 3), compression="gzip")
        f.create_dataset("sha256", data=np.array([f"{i:064x}" for i in range(10)], "S64"))
    layout, _ = read_shard_layout(path)
    assert layout.offset is None
    np.testing.assert_array_equal(read_rows_at([(path, layout)], np.zeros(3), np.array([1, 2, 9])),
                                  features[[1, 2, 9]])


def test_rows_of_many_shards_read_at_once_in_runs_whatever_their_layout(tmp_path: Path):
    # two shards read straight from their files, one only HDF5 reads, between them
    store, shas, features = _store(tmp_path, n=48, shard_rows=16, shape=(4, 4, 256))
    paths = sorted(store.path.glob("*.h5"))
    with h5py.File(paths[1], "r+") as f:  # the middle shard rewritten chunked and compressed
        rows = f["features"][:]
        del f["features"]
        f.create_dataset("features", data=rows, chunks=(4, 4, 4, 256), compression="gzip")
    shards = [(path, read_shard_layout(path)[0]) for path in paths]
    assert [layout.offset is None for _, layout in shards] == [False, True, False]
    # runs: rows 0-2 and 12 of the first (16 KB rows: 12 is a run of its own), then 5 and 6
    # of the second, 0 and 15 of the third
    shard = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    rows = np.array([0, 1, 2, 12, 5, 6, 0, 15])
    np.testing.assert_array_equal(read_rows_at(shards, shard, rows),
                                  features[shard * 16 + rows])
    with pytest.raises(ValueError, match="ordered by"):
        read_rows_at(shards, np.array([1, 0]), np.array([0, 0]))
    with pytest.raises(ValueError, match="ordered by"):
        read_rows_at(shards, np.array([0, 0]), np.array([3, 3]))


def test_absent_images_are_named_at_once(tmp_path: Path):
    store, shas, _ = _store(tmp_path)
    with pytest.raises(MissingFeaturesError, match="1 image"):
        store.rows([shas[0], "f" * 64])


def test_a_shard_that_holds_other_images_than_the_index_says_is_refused(tmp_path: Path):
    store, shas, _ = _store(tmp_path)
    ((name, row),) = store.locate([shas[20]])
    with h5py.File(store.path / name, "r+") as f:
        f["sha256"][row] = np.bytes_("e" * 64)
    with pytest.raises(CacheError, match="reindex"):
        store.rows(shas)


def test_a_shard_removed_or_cut_after_checking_fails_the_read_clearly(tmp_path: Path):
    store, shas, features = _store(tmp_path)
    rows = store.rows(shas)
    ((name, _),) = store.locate([shas[0]])
    (store.path / name).unlink()
    with pytest.raises(CacheError, match="removed while"):
        rows.read([0])
    ((name, _),) = store.locate([shas[39]])
    shard = store.path / name
    layout, _ = read_shard_layout(shard)
    shard.write_bytes(shard.read_bytes()[:layout.offset + layout.row_bytes])  # its row 0 kept
    with pytest.raises(CacheError, match="replaced since"):  # its size changed
        rows.read([38, 39])
    np.testing.assert_array_equal(rows.read([20, 16]), features[[20, 16]])  # an intact shard


def test_a_shard_replaced_under_its_name_fails_the_read(tmp_path: Path):
    # a partition's shard is rewritten under the same name when its partition runs again
    store, shas, features = _store(tmp_path)
    rows = store.rows(shas)
    ((name, _),) = store.locate([shas[0]])
    shard = store.path / name
    replacement = shard.with_suffix(".new")
    replacement.write_bytes(shard.read_bytes() + b"\0" * 4096)
    replacement.replace(shard)
    with pytest.raises(CacheError, match="was replaced since"):
        rows.read([0])
    np.testing.assert_array_equal(store.rows(shas).read([0, 39]), features[[0, 39]])


def test_positions_outside_the_list_are_refused(tmp_path: Path):
    store, shas, _ = _store(tmp_path)
    rows = store.rows(shas[:5])
    with pytest.raises(IndexError, match="list of 5 images"):
        rows.read([-1])
    with pytest.raises(IndexError):
        rows.read([5])


def test_images_are_located_a_batch_at_a_time(tmp_path: Path, monkeypatch):
    import cache.reader

    monkeypatch.setattr(cache.reader, "_LOCATED_TOGETHER", 7)
    store, shas, features = _store(tmp_path)
    order = list(range(39, -1, -1))
    rows = store.rows([shas[i] for i in order])
    np.testing.assert_array_equal(rows.read(np.arange(40)), features[order])
    assert [order[i] for i in rows.storage_order()] == list(range(40))
