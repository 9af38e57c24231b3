"""The ``pipeline cache`` commands: ``ls``, ``info``, ``verify`` and ``gc``, as text.

The mechanics live in :mod:`cache` (the reader, :mod:`cache.maintenance`, the writer); this
module knows what the pipeline knows and the cache does not: which entries the dataset views
reference (images and their augmented copies), and how to say what happened. It never imports
TensorFlow, never resolves a backbone and never builds a model.
"""

from __future__ import annotations

import json
from pathlib import Path

from cache import CacheError, FeatureStore, list_stores, open_writer
from cache.maintenance import GarbageReport, VerifyReport, plan_garbage, verify_store
from cache.manifest import load_manifest

from .data.view import DatasetView, read_view
from .errors import DamagedCacheError, PipelineError


def format_bytes(n: int) -> str:
    """A byte count for people: 512 B, 3.1 MiB."""
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


_SHORT_DTYPES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def _numbers_label(description: dict) -> str:
    """``compute/storage`` dtypes, e.g. ``bf16/f32`` (fingerprints from before either existed
    describe float32 by leaving them out)."""
    return "/".join(_SHORT_DTYPES.get(description.get(key, "float32"), "?")
                    for key in ("precision", "storage"))


def format_store_list(cache_dir: Path) -> str:
    """One row per fingerprint under ``cache_dir``, with totals."""
    stores = list_stores(cache_dir)
    if not stores:
        return f"{cache_dir}: empty (no fingerprints yet; run `pipeline run extract`)"
    header = f"{'fingerprint':<24} {'weights':<22} {'input':<14} {'layer':<16} {'shape':<12} " \
             f"{'dtypes':<8} {'entries':>8} {'shards':>6} {'bytes':>10}"
    lines = [f"cache {cache_dir}", header, "-" * len(header)]
    total_entries = total_bytes = 0
    for store in stores:
        d = store.description
        stats = store.stats()
        size = "x".join(str(s) for s in d.get("input", {}).get("size", []))
        if d.get("flip_average"):  # features of the image and its mirror, averaged
            size += "+flip"
        shape = "x".join(str(s) for s in d.get("output_shape", []))
        layer = d.get("output_layer") or d.get("tap") or "?"
        lines.append(f"{store.fingerprint:<24} {_weights_label(d):<22} {size:<14} "
                     f"{layer:<16} {shape:<12} {_numbers_label(d):<8} {stats.entries:>8,} "
                     f"{stats.shards:>6} {format_bytes(stats.bytes):>10}")
        total_entries += stats.entries
        total_bytes += stats.bytes
    lines += ["-" * len(header),
              f"{len(stores)} fingerprint(s), {total_entries:,} entries, "
              f"{format_bytes(total_bytes)}"]
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
             f"  entries  {stats.entries:,} in {stats.shards} shard(s), "
             f"{format_bytes(stats.bytes)}"]
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


def verify_cache(cache_dir: Path, fingerprint: str | None = None) -> list[VerifyReport]:
    """Verify every store (or those whose fingerprint starts with ``fingerprint``) and record
    the damaged entries so that the next extract recomputes them."""
    return [verify_store(store) for store in select_stores(cache_dir, fingerprint)]


def format_verify(reports: list[VerifyReport], cache_dir: Path) -> str:
    """One line per store, then every damaged entry with its shard, row and reason."""
    if not reports:
        return f"{cache_dir}: empty (nothing to verify)"
    lines = []
    for report in reports:
        state = "ok" if report.ok else f"{len(report.damaged)} damaged"
        lines.append(f"{report.fingerprint}: {report.shards} shards, {report.rows} entries "
                     f"checked: {state}")
        for entry in report.damaged:
            lines.append(f"  damaged {entry.sha256[:16]}  {entry.shard} row {entry.row}: "
                         f"{entry.reason}")
    return "\n".join(lines)


def raise_if_damaged(reports: list[VerifyReport]) -> None:
    """:class:`DamagedCacheError` (exit code 1) when any report found damage."""
    damaged = sum(len(r.damaged) for r in reports)
    if damaged:
        raise DamagedCacheError(f"{damaged} damaged cache entries (listed above); the next "
                                f"`pipeline run extract` recomputes them")


def views_referencing(store: FeatureStore) -> list[tuple[Path, DatasetView]]:
    """Every dataset view of the cache (in any store's views folder) whose images have entries
    in ``store``: views of its fingerprint, and views that cached a tap there."""
    found = []
    for home in list_stores(store.cache_dir):
        folder = home.views_dir()
        for view_file in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                view = read_view(view_file)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                # Keeping what an unreadable view may reference is the only safe choice.
                raise PipelineError(f"{view_file}: unreadable dataset view ({exc}); gc stops "
                                    f"rather than guess what it references") from None
            if store.fingerprint in view.stores().values():
                found.append((view_file, view))
    return found


def referenced_keys(store: FeatureStore) -> set[str]:
    """Every cache key a dataset view names in ``store``: its images and augmented copies."""
    keys: set[str] = set()
    for _, view in views_referencing(store):
        keys.update(image.sha256 for image in view.images)
        keys.update(item.key for item in view.augmented_copies())
    return keys


def collect_garbage(cache_dir: Path, apply: bool = False, lock_timeout: float = 0.0,
                    fingerprint: str | None = None) -> list[GarbageReport]:
    """Entries no dataset view references, per store; with ``apply``, remove them.

    Removing takes each store's write lock (waiting ``lock_timeout`` seconds for a running
    extraction, see ``cache.lock_timeout``), so it never touches a shard being written.
    """
    reports = []
    for store in select_stores(cache_dir, fingerprint):
        report = _plan(store)
        if apply and report.unreferenced:
            with open_writer(store, store.description, lock_timeout=lock_timeout) as writer:
                # planned again under the lock: an extraction may have finished meanwhile
                report = _plan(store)
                report.bytes_freed = writer.remove_entries(report.unreferenced)
            report.applied = True
        reports.append(report)
    return reports


def _plan(store: FeatureStore) -> GarbageReport:
    """plan_garbage, keeping what the views reference and every entry of a shard written after
    the newest view: an extraction writes its view only after its last shard, so such rows
    may belong to a view that does not exist yet."""
    keep = referenced_keys(store)
    newest = max((path.stat().st_mtime_ns for path, _ in views_referencing(store)), default=0)
    recent = set()
    for shard in load_manifest(store.path).shards.values():
        path = store.path / shard.name
        if path.exists() and path.stat().st_mtime_ns > newest:
            recent.update(shard.sha256)
    report = plan_garbage(store, keep | recent)
    report.recent = len(recent - keep)
    report.referenced -= report.recent
    return report


def format_garbage(reports: list[GarbageReport], cache_dir: Path) -> str:
    """What gc found (dry run) or did, per store, with sizes."""
    if not reports:
        return f"{cache_dir}: empty (nothing to collect)"
    lines = []
    for report in reports:
        verb = "removed" if report.applied else "would remove"
        lines.append(f"{report.fingerprint}: {report.entries} entries, {report.referenced} "
                     f"referenced by dataset views; {verb} {len(report.unreferenced)} "
                     f"({'freed' if report.applied else 'about'} "
                     f"{format_bytes(report.bytes_freed)}: {len(report.shards_deleted)} shards "
                     f"deleted, {len(report.shards_rewritten)} rewritten)"
                     + (f"; kept {report.recent} newer than every dataset view (an "
                        f"extraction may still be writing its view)" if report.recent else ""))
    if not any(r.applied for r in reports) and any(r.unreferenced for r in reports):
        lines.append("dry run: nothing was changed; run `pipeline cache gc --apply` to remove")
    return "\n".join(lines)
