"""``pipeline cache verify`` and ``pipeline cache gc`` on a real extracted cache (32x32, random
weights): damage is found, named and repaired by the next extract; gc dry runs change nothing
and real ones free what they said."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from cache import CacheLockedError, FeatureStore, open_writer
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.extract.run import run_extract
from tests.support.projects import extract, make_image_folder, tiny_document, write_config


@pytest.fixture
def extracted(tmp_path: Path):
    """12 images extracted into 3 shards of 4; returns (project, store, features by sha)."""
    make_image_folder(tmp_path / "data", {"cats": 6, "dogs": 6})
    write_config(tmp_path, tiny_document())
    config = load_config(tmp_path / "stages.yaml")
    result = run_extract(RunContext(config), progress=False)
    store = FeatureStore(config.cache.dir, result.fingerprint)
    shas = store.sha256s()
    return tmp_path, store, dict(zip(shas, store.get(shas)))


def _cli(capsys, project: Path, *args: str) -> tuple[int, str, str]:
    code = main([*args, "-c", str(project / "stages.yaml")])
    out, err = capsys.readouterr()
    return code, out, err


def _flip_byte(shard: Path, row: int) -> None:
    with h5py.File(shard, "r") as f:
        dataset = f["features"]
        offset = dataset.id.get_offset() + row * int(np.prod(dataset.shape[1:])) * 4 + 10
    with open(shard, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def _extract_again(project: Path):
    return extract(project)


def _assert_cache_exact(store: FeatureStore, original: dict) -> None:
    store.refresh()
    assert sorted(store.sha256s()) == sorted(original)
    np.testing.assert_allclose(store.get(list(original)), np.stack(list(original.values())),
                               rtol=1e-5, atol=1e-6)


def test_verify_names_a_flipped_byte_and_the_next_extract_recomputes_it(extracted, capsys):
    project, store, original = extracted
    shard = store.path / store.shards()[1].name
    victim = store.shards()[1].sha256[2]
    _flip_byte(shard, row=2)

    code, out, err = _cli(capsys, project, "cache", "verify")
    assert code == 1
    assert f"damaged {victim[:16]}  {shard.name} row 2: checksum mismatch" in out
    assert "1 damaged cache entries" in err and "recomputes" in err
    assert victim not in FeatureStore(store.cache_dir, store.fingerprint)  # now missing

    result = _extract_again(project)
    assert result.new == 1
    assert (store.path / f".{shard.name}.damaged").exists()  # kept aside for a person
    assert _cli(capsys, project, "cache", "verify")[0] == 0
    _assert_cache_exact(store, original)


@pytest.mark.parametrize("damage, reason", [
    ("truncate", "shard unreadable"),
    ("delete", "shard file missing"),
])
def test_verify_names_truncated_and_deleted_shards_and_extract_repairs_them(
        extracted, capsys, damage: str, reason: str):
    project, store, original = extracted
    record = store.shards()[0]
    shard = store.path / record.name
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:2000])
    else:
        shard.unlink()
    code, out, _ = _cli(capsys, project, "cache", "verify")
    assert code == 1
    assert out.count(reason) == record.rows == 4
    assert _extract_again(project).new == 4
    assert _cli(capsys, project, "cache", "verify")[0] == 0
    _assert_cache_exact(store, original)


def _rewrite_shard(shard: Path, rows: slice | list[int]) -> None:
    """Write ``shard`` again with only (or in the order of) ``rows``, keeping its attributes:
    its manifest record then points at rows that are gone or hold other images."""
    with h5py.File(shard, "r") as f:
        features, sha256 = f["features"][:][rows], f["sha256"][:][rows]
        attrs = dict(f.attrs)
    shard.unlink()
    with h5py.File(shard, "w") as f:
        f.create_dataset("features", data=features)
        f.create_dataset("sha256", data=sha256)
        f.attrs.update(attrs)


@pytest.mark.parametrize("rows, reason, damaged", [
    (slice(0, 3), "row missing (shard shorter than its manifest record)", 1),
    ([1, 0, 2, 3], "not this image", 2),
])
def test_verify_names_manifest_rows_the_shard_does_not_hold_and_extract_repairs_them(
        extracted, capsys, rows, reason: str, damaged: int):
    project, store, original = extracted
    record = store.shards()[2]
    _rewrite_shard(store.path / record.name, rows)
    code, out, _ = _cli(capsys, project, "cache", "verify")
    assert code == 1 and out.count(reason) == damaged
    assert f"{damaged} damaged" in out
    assert _extract_again(project).new == damaged
    assert _cli(capsys, project, "cache", "verify")[0] == 0
    _assert_cache_exact(store, original)


def test_verify_is_read_only_and_works_while_an_extraction_holds_the_lock(extracted, capsys):
    project, store, _ = extracted
    before = {p.name: p.read_bytes() for p in store.path.iterdir() if p.is_file()}
    with open_writer(store, store.description):
        code, out, _ = _cli(capsys, project, "cache", "verify")
    assert code == 0 and "12 entries checked: ok" in out
    after = {p.name: p.read_bytes() for p in store.path.iterdir() if p.is_file()}
    locks = {".write.lock", ".write.holder"}
    assert set(after) - locks == set(before) - locks
    assert all(after[name] == before[name] for name in set(before) - locks)


def test_gc_dry_run_changes_nothing_and_a_real_one_frees_what_it_said(extracted, capsys):
    project, store, original = extracted
    # five dog photos leave the data set: the view no longer references them
    gone = sorted((project / "data" / "dogs").iterdir())[:5]
    for path in gone:
        path.unlink()
    in_view = {image.sha256 for image in _extract_again(project).view.images}
    assert len(in_view) == 7

    files = {p.name: p.read_bytes() for p in store.path.rglob("*") if p.is_file()}
    code, out, _ = _cli(capsys, project, "cache", "gc")
    assert code == 0
    assert "12 entries, 7 referenced by dataset views; would remove 5" in out
    assert "dry run" in out
    assert {p.name: p.read_bytes() for p in store.path.rglob("*") if p.is_file()} == files

    from pipeline.cache_commands import collect_garbage
    (planned,) = collect_garbage(store.cache_dir)
    size_before = sum(p.stat().st_size for p in store.path.glob("*.h5"))
    code, out, _ = _cli(capsys, project, "cache", "gc", "--apply")
    assert code == 0 and "removed 5" in out
    size_after = sum(p.stat().st_size for p in store.path.glob("*.h5"))
    store.refresh()
    assert len(store) == 7
    freed = size_before - size_after
    assert freed > 0 and f"freed {_size(freed)}" in out
    # what the dry run said: the same entries, the same shards deleted and rewritten
    shard_counts = f"{len(planned.shards_deleted)} shards deleted, " \
        f"{len(planned.shards_rewritten)} rewritten"
    assert f"removed {len(planned.unreferenced)} " in out and shard_counts in out
    replaced = set(planned.shards_deleted) | set(planned.shards_rewritten)
    assert replaced and not replaced & {p.name for p in store.path.glob("*.h5")}
    assert set(store.sha256s()) == in_view
    _assert_cache_exact(store, {k: v for k, v in original.items() if k in in_view})
    assert "would remove 0" in _cli(capsys, project, "cache", "gc")[1]
    assert _extract_again(project).new == 0  # nothing the view needs was removed


def test_gc_never_touches_a_cache_an_extraction_is_writing(extracted):
    from pipeline.cache_commands import collect_garbage

    project, store, _ = extracted
    shutil.rmtree(project / "data" / "dogs")
    _extract_again(project)
    with open_writer(store, store.description):
        with pytest.raises(CacheLockedError):
            collect_garbage(store.cache_dir, apply=True)
    store.refresh()
    assert len(store) == 12  # nothing removed
    assert collect_garbage(store.cache_dir, apply=True)[0].applied


def _size(n: int) -> str:
    from pipeline.cache_commands import format_bytes
    return format_bytes(n)
