"""The feature cache on its own: shards, manifest, recovery after crashes, locking, dask."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cache import (
    CacheLockedError,
    CacheLockWaitWarning,
    FeatureStore,
    MissingFeaturesError,
    list_stores,
    open_writer,
)
from cache.errors import InjectedFault
from cache.manifest import MANIFEST_NAME

DESCRIPTION = {"architecture": "test", "output_shape": [2, 2, 3]}


def _rows(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    shas = [f"{seed:08x}{i:056x}" for i in range(n)]
    return shas, rng.standard_normal((n, 2, 2, 3)).astype(np.float32)


def _fill(store: FeatureStore, shas, features, shard_rows=4):
    with open_writer(store, DESCRIPTION, shard_rows=shard_rows) as writer:
        writer.add(shas, features)
    store.refresh()


def test_written_features_read_back_in_any_order(tmp_path: Path):
    store = FeatureStore(tmp_path, "fp-a")
    shas, features = _rows(10)
    _fill(store, shas, features)
    assert len(store) == 10 and shas[3] in store
    order = [7, 0, 7, 9, 3]
    np.testing.assert_array_equal(store.get([shas[i] for i in order]), features[order])
    assert [s.rows for s in store.shards()] == [4, 4, 2]
    assert store.get([]).shape == (0, 2, 2, 3)


def test_shards_are_hdf5_with_the_documented_layout(tmp_path: Path):
    import h5py
    store = FeatureStore(tmp_path, "fp-a")
    shas, features = _rows(3)
    _fill(store, shas, features)
    (shard,) = sorted(store.path.glob("*.h5"))
    with h5py.File(shard, "r") as f:
        assert f["features"].shape == (3, 2, 2, 3) and f["features"].dtype == np.float32
        assert [s.decode() for s in f["sha256"][:]] == shas
        assert f.attrs["fingerprint"] == "fp-a"
    assert [p.name for p in tmp_path.rglob("*.h5")] == [shard.name]  # only shards end in .h5


def test_dask_array_is_lazy_and_equal(tmp_path: Path):
    store = FeatureStore(tmp_path, "fp-a")
    shas, features = _rows(10)
    _fill(store, shas, features)
    wanted = shas[::-1]
    lazy = store.to_dask(wanted, chunk_rows=3)
    assert lazy.shape == (10, 2, 2, 3) and lazy.chunks[0] == (3, 3, 3, 1)
    np.testing.assert_array_equal(lazy.compute(), features[::-1])
    np.testing.assert_array_equal(lazy[4:6].compute(), features[::-1][4:6])


def test_missing_entries_are_named(tmp_path: Path):
    store = FeatureStore(tmp_path, "fp-a")
    shas, features = _rows(2)
    _fill(store, shas, features)
    assert store.missing([shas[0], "f" * 64, "f" * 64, "e" * 64]) == ["f" * 64, "e" * 64]
    with pytest.raises(MissingFeaturesError, match="2 image.*ffff"):
        store.get([shas[0], "f" * 64, "e" * 64])


def test_rows_already_cached_are_not_stored_twice(tmp_path: Path):
    store = FeatureStore(tmp_path, "fp-a")
    shas, features = _rows(6)
    _fill(store, shas[:4], features[:4])
    _fill(store, shas + shas[:2], np.concatenate([features, features[:2]]))
    assert len(store) == 6
    assert sum(s.rows for s in store.shards()) == 6


def test_exception_inside_the_writer_keeps_buffered_rows(tmp_path: Path):
    store = FeatureStore(tmp_path, "fp-a")
    shas, features = _rows(3)
    with pytest.raises(RuntimeError, match="boom"):
        with open_writer(store, DESCRIPTION, shard_rows=100) as writer:
            writer.add(shas, features)
            raise RuntimeError("boom")
    store.refresh()
    np.testing.assert_array_equal(store.get(shas), features)


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path: Path):
    store = FeatureStore(tmp_path, "fp-a")
    with open_writer(store, DESCRIPTION):
        with pytest.raises(CacheLockedError, match=r"pid \d+ .*cache.lock_timeout"):
            open_writer(FeatureStore(tmp_path, "fp-a"), DESCRIPTION, lock_timeout=0)
        with pytest.raises(CacheLockedError, match="waited 0.2 s"), \
                pytest.warns(CacheLockWaitWarning, match=r"pid \d+ .*waiting up to 0.2 s"):
            open_writer(FeatureStore(tmp_path, "fp-a"), DESCRIPTION, lock_timeout=0.2)
    open_writer(FeatureStore(tmp_path, "fp-a"), DESCRIPTION).close()  # free again


def test_torn_manifest_line_is_ignored_and_cut(tmp_path: Path):
    store = FeatureStore(tmp_path, "fp-a")
    shas, features = _rows(8)
    _fill(store, shas, features)
    manifest = store.path / MANIFEST_NAME
    lines = manifest.read_bytes().splitlines(keepends=True)
    manifest.write_bytes(lines[0] + lines[1][: len(lines[1]) // 2])  # crash mid-append
    reader = FeatureStore(tmp_path, "fp-a")
    np.testing.assert_array_equal(reader.get(shas), features)  # second shard found on disk
    assert reader.stats().unlisted_shards == 1
    with open_writer(reader, DESCRIPTION) as writer:
        assert writer.adopted_shards == 1
    text = manifest.read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 2
    assert all(json.loads(line) for line in text.splitlines())
    reader.refresh()
    assert reader.stats().unlisted_shards == 0 and len(reader) == 8


def test_temporary_files_of_a_dead_writer_are_removed(tmp_path: Path):
    store = FeatureStore(tmp_path, "fp-a")
    shas, features = _rows(2)
    _fill(store, shas, features)
    stale = store.path / ".shard-000009-deadbeef.h5.tmp"
    stale.write_bytes(b"half a shard")
    assert len(FeatureStore(tmp_path, "fp-a")) == 2  # readers never look at it
    open_writer(store, DESCRIPTION).close()
    assert not stale.exists()


@pytest.mark.parametrize("action", ["raise", "interrupt"])
@pytest.mark.parametrize("point", ["shard.begin", "shard.written", "shard.renamed",
                                   "manifest.partial", "manifest.appended"])
def test_failure_at_any_write_point_loses_nothing_committed(tmp_path: Path, monkeypatch, point,
                                                           action):
    store = FeatureStore(tmp_path, "fp-a")
    shas, features = _rows(12)
    _fill(store, shas[:4], features[:4])
    monkeypatch.setenv("PIPELINE_FAULT", f"{point}:2:{action}")
    import cache.faults
    monkeypatch.setattr(cache.faults, "_hits", {})
    with pytest.raises((InjectedFault, KeyboardInterrupt)):
        _fill(store, shas[4:], features[4:])
    assert sum(s.rows for s in FeatureStore(tmp_path, "fp-a").shards()) <= 12
    monkeypatch.delenv("PIPELINE_FAULT")
    assert not list(store.path.glob(".*.tmp"))
    _fill(FeatureStore(tmp_path, "fp-a"), shas, features)  # resume
    final = FeatureStore(tmp_path, "fp-a")
    assert len(final) == 12
    assert sum(s.rows for s in final.shards()) == 12  # nothing stored twice
    np.testing.assert_array_equal(final.get(shas), features)


def test_list_stores_and_stats(tmp_path: Path):
    assert list_stores(tmp_path / "absent") == []
    for name, n in [("fp-b", 3), ("fp-a", 5)]:
        shas, features = _rows(n, seed=n)
        _fill(FeatureStore(tmp_path, name), shas, features)
    (tmp_path / "not-a-store").mkdir()
    stores = list_stores(tmp_path)
    assert [s.fingerprint for s in stores] == ["fp-a", "fp-b"]
    stats = stores[0].stats()
    assert (stats.entries, stats.shards) == (5, 2) and stats.bytes > 5 * 12 * 4
    assert stores[0].description == DESCRIPTION


def test_importing_cache_does_not_import_tensorflow():
    code = ("import sys, cache; from cache import FeatureStore; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_damaged_line_in_the_middle_of_the_manifest_is_skipped_and_repaired(tmp_path: Path):
    store = FeatureStore(tmp_path, "fp-a")
    shas, features = _rows(12)
    _fill(store, shas, features)
    manifest = store.path / MANIFEST_NAME
    lines = manifest.read_bytes().splitlines(keepends=True)
    manifest.write_bytes(lines[0] + lines[1][:40] + lines[2])  # torn line glued to the next
    reader = FeatureStore(tmp_path, "fp-a")
    np.testing.assert_array_equal(reader.get(shas), features)
    with open_writer(reader, DESCRIPTION) as writer:
        assert writer.adopted_shards == 2
    assert all(json.loads(line) for line in manifest.read_text().splitlines())
    final = FeatureStore(tmp_path, "fp-a")
    assert len(final.shards()) == 3 and sum(s.rows for s in final.shards()) == 12


def test_a_shard_of_another_fingerprint_is_moved_aside(tmp_path: Path):
    other = FeatureStore(tmp_path, "fp-b")
    shas, features = _rows(3, seed=7)
    _fill(other, shas, features)
    store = FeatureStore(tmp_path, "fp-a")
    open_writer(store, DESCRIPTION).close()
    (shard,) = other.path.glob("*.h5")
    (store.path / shard.name).write_bytes(shard.read_bytes())
    assert len(FeatureStore(tmp_path, "fp-a")) == 0  # readers ignore it
    open_writer(store, DESCRIPTION).close()
    assert not list(store.path.glob("*.h5"))
    assert (store.path / f".{shard.name}.foreign").exists()


def test_shards_found_outside_the_manifest_never_list_an_image_twice(tmp_path: Path):
    # A distributed run's straggler task (or a partition run twice) can leave a complete shard
    # holding images another shard already has: recovery keeps only what is new.
    from cache.manifest import load_manifest
    from cache.shard import write_shard
    store = FeatureStore(tmp_path, "fp-a")
    shas, features = _rows(6)
    _fill(store, shas[:4], features[:4])
    write_shard(store.path, "shard-pcopy-000.h5", "fp-a", shas[:2], features[:2])
    write_shard(store.path, "shard-pmixed-000.h5", "fp-a", shas[2:6], features[2:6])
    open_writer(store, DESCRIPTION).close()
    store.refresh()
    rows = [sha for r in load_manifest(store.path).shards.values() for sha in r.sha256]
    assert sorted(rows) == sorted(shas)                    # each image once
    assert not (store.path / "shard-pcopy-000.h5").exists()  # nothing new in it: deleted
    np.testing.assert_array_equal(store.get(shas), features)


def test_a_shard_reported_by_a_worker_is_recorded_without_copies(tmp_path: Path):
    from cache.manifest import load_manifest
    from cache.shard import write_shard
    store = FeatureStore(tmp_path, "fp-a")
    shas, features = _rows(6)
    _fill(store, shas[:3], features[:3], shard_rows=3)
    with open_writer(store, DESCRIPTION) as writer:
        copy = write_shard(store.path, "shard-pa-000.h5", "fp-a", shas[:3], features[:3])
        writer.commit_written(copy)          # the same images again: nothing new
        mixed = write_shard(store.path, "shard-pb-000.h5", "fp-a", shas[2:], features[2:])
        writer.commit_written(mixed)         # its first row is a copy: dropped
    store.refresh()
    rows = [sha for r in load_manifest(store.path).shards.values() for sha in r.sha256]
    assert sorted(rows) == sorted(shas)
    assert not (store.path / "shard-pa-000.h5").exists()
    np.testing.assert_array_equal(store.get(shas), features)


def test_a_float16_store_keeps_half_the_bytes_and_serves_float32(tmp_path: Path):
    import h5py

    from cache.maintenance import verify_store

    half = FeatureStore(tmp_path, "fp-half")
    full = FeatureStore(tmp_path, "fp-full")
    rng = np.random.default_rng(3)
    shas = [f"{i:064x}" for i in range(64)]
    features = rng.standard_normal((64, 4, 4, 32)).astype(np.float32) * 50
    description = {"architecture": "test", "output_shape": [4, 4, 32]}
    for store, extra in ((half, {"storage": "float16"}), (full, {})):
        with open_writer(store, {**description, **extra}, shard_rows=64) as writer:
            writer.add(shas, features)
        store.refresh()
    (shard,) = half.path.glob("*.h5")
    with h5py.File(shard, "r") as f:
        assert f["features"].dtype == np.float16
    got = half.get(shas)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, features.astype(np.float16).astype(np.float32))
    assert np.abs(got - features).max() <= np.abs(features).max() * 2 ** -11
    lazy = half.to_dask(shas[:10])
    assert lazy.dtype == np.float32
    np.testing.assert_array_equal(lazy.compute(), got[:10])
    assert half.stats().bytes < 0.6 * full.stats().bytes
    assert verify_store(half).ok
    # a flipped bit is caught, and a rewrite (what gc and repair do) stays float16
    with h5py.File(shard, "r+") as f:
        row = f["features"][5]
        row[0, 0, 0] = -row[0, 0, 0] - 1
        f["features"][5] = row
    report = verify_store(half)
    assert [entry.sha256 for entry in report.damaged] == [shas[5]]
    with open_writer(half, half.description) as writer:
        writer.remove_entries([shas[0]])
    half.refresh()
    (rewritten,) = half.path.glob("*.h5")
    with h5py.File(rewritten, "r") as f:
        assert f["features"].dtype == np.float16 and len(f["sha256"]) == 62
    assert verify_store(half).ok
    np.testing.assert_array_equal(half.get(shas[1:5]), got[1:5])


def test_an_unknown_storage_dtype_is_refused(tmp_path: Path):
    from cache.errors import CacheError

    store = FeatureStore(tmp_path, "fp")
    with pytest.raises(CacheError, match="storage dtype 'int8': shards store float32 or float16"):
        open_writer(store, {"storage": "int8"})
    assert not store.path.exists()  # refused before anything was written


def test_removing_entries_of_many_shards_rewrites_the_manifest_once(tmp_path: Path,
                                                                     monkeypatch):
    """gc's cost grows with the entries: the rows the shards keep go into new shards together
    and the journal is rewritten once, not once per shard."""
    import cache.writer as writer_module
    from cache.maintenance import verify_store

    store = FeatureStore(tmp_path, "fp")
    shas, features = _rows(40)
    _fill(store, shas, features, shard_rows=4)   # 10 shards
    rewrites = []
    real = writer_module.rewrite_manifest
    monkeypatch.setattr(writer_module, "rewrite_manifest",
                        lambda *a: (rewrites.append(a), real(*a)))
    dropped = shas[::3]   # a row or two of every shard
    with open_writer(store, {}, shard_rows=16) as writer:
        writer.remove_entries(dropped)
    assert len(rewrites) == 1
    store.refresh()
    kept = [s for s in shas if s not in dropped]
    assert sorted(store.sha256s()) == sorted(kept)
    np.testing.assert_array_equal(store.get(kept), features[[shas.index(s) for s in kept]])
    assert len(store.shards()) == 2   # 26 kept rows in shards of 16, not 10 small shards
    assert verify_store(store).ok


def test_verify_in_several_processes_finds_what_one_process_finds(tmp_path: Path):
    import h5py

    from cache.maintenance import PARALLEL_SHARDS, verify_store

    store = FeatureStore(tmp_path, "fp")
    shas, features = _rows(4 * PARALLEL_SHARDS)
    _fill(store, shas, features, shard_rows=4)
    shard = store.path / store.locate([shas[41]])[0][0]
    with h5py.File(shard, "r+") as f:   # flip one value of row 41
        row = f["features"][1]
        row[0, 0, 0] = -row[0, 0, 0] - 1
        f["features"][1] = row
    serial = verify_store(store, record=False, workers=1)
    parallel = verify_store(store, record=False, workers=2)
    assert [e.sha256 for e in parallel.damaged] == [e.sha256 for e in serial.damaged] == \
        [shas[41]]
    assert parallel.shards == serial.shards == PARALLEL_SHARDS
    assert parallel.rows == serial.rows == len(shas)
