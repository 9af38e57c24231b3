"""Text for ``pipeline cache ls`` and ``pipeline cache info`` (reads the cache, no TensorFlow)."""

from __future__ import annotations

import json
from pathlib import Path

from cache import CacheError, FeatureStore, list_stores


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _weights_label(description: dict) -> str:
    weights = description.get("weights", {})
    source = weights.get("source", "?")
    if source == "random":
        return f"random(seed={weights.get('seed')})"
    return f"{source}:{weights.get('sha256', '')[:8]}"


def format_store_list(cache_dir: Path) -> str:
    """One row per fingerprint under ``cache_dir``, with totals."""
    stores = list_stores(cache_dir)
    if not stores:
        return f"{cache_dir}: empty (no fingerprints yet; run `pipeline run extract`)"
    header = f"{'fingerprint':<24} {'weights':<22} {'input':<9} {'layer':<12} {'shape':<12} " \
             f"{'entries':>8} {'shards':>6} {'bytes':>10}"
    lines = [f"cache {cache_dir}", header, "-" * len(header)]
    total_entries = total_bytes = 0
    for store in stores:
        d = store.description
        stats = store.stats()
        size = "x".join(str(s) for s in d.get("input", {}).get("size", []))
        shape = "x".join(str(s) for s in d.get("output_shape", []))
        lines.append(f"{store.fingerprint:<24} {_weights_label(d):<22} {size:<9} "
                     f"{d.get('output_layer', '?'):<12} {shape:<12} {stats.entries:>8,} "
                     f"{stats.shards:>6} {_size(stats.bytes):>10}")
        total_entries += stats.entries
        total_bytes += stats.bytes
    lines += ["-" * len(header),
              f"{len(stores)} fingerprint(s), {total_entries:,} entries, {_size(total_bytes)}"]
    return "\n".join(lines)


def select_stores(cache_dir: Path, fingerprint: str | None) -> list[FeatureStore]:
    """Every store under ``cache_dir``, or those whose fingerprint starts with ``fingerprint``
    (:class:`CacheError` when none does)."""
    stores = list_stores(cache_dir)
    if fingerprint is not None:
        stores = [s for s in stores if s.fingerprint.startswith(fingerprint)]
        if not stores:
            raise CacheError(f"no fingerprint {fingerprint!r} in {cache_dir}; "
                             f"see `pipeline cache ls`")
    return stores


def format_store_info(cache_dir: Path, fingerprint: str | None = None) -> str:
    """What a fingerprint is made of, its counts, and the dataset views that use it."""
    stores = select_stores(cache_dir, fingerprint)
    if not stores:
        return f"{cache_dir}: empty"
    blocks = [_store_info(store) for store in stores]
    return "\n\n".join(blocks)


def _store_info(store: FeatureStore) -> str:
    stats = store.stats()
    lines = [f"fingerprint {store.fingerprint}", f"  folder   {store.path}",
             f"  entries  {stats.entries:,} in {stats.shards} shard(s), {_size(stats.bytes)}"]
    if stats.unlisted_shards:
        lines.append(f"  note     {stats.unlisted_shards} complete shard(s) not yet in the "
                     f"manifest (left by an interrupted run; the next extract lists them)")
    lines.append("  made of  " + json.dumps(store.description, sort_keys=True))
    views = sorted(store.views_dir().glob("*.json")) if store.views_dir().is_dir() else []
    for path in views:
        try:
            view = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            lines.append(f"  view     {path.name}: unreadable")
            continue
        lines.append(f"  view     {path.stem}: {len(view.get('images', []))} images, "
                     f"{len(view.get('classes', []))} classes, "
                     f"{len(view.get('skipped', []))} skipped, root {view.get('root')}, "
                     f"written {view.get('created', '?')}")
    return "\n".join(lines)
