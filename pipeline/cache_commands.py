"""The ``pipeline cache`` commands: ``ls``, ``info``, ``verify`` and ``gc``, as text.

The mechanics live in :mod:`cache` (the reader, :mod:`cache.maintenance`, the writer); this
module knows what the pipeline knows and the cache does not: which entries the dataset views
reference (images and their augmented copies), and how to say what happened. It never imports
TensorFlow, never resolves a backbone and never builds a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cache import CacheError, FeatureStore, list_stores, open_writer
from cache.index import EntryIndex
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


def store_summary(store: FeatureStore, views: bool = False) -> dict[str, Any]:
    """One fingerprint as plain data (the rows of ``cache ls --json`` and ``cache info
    --json``): ``fingerprint``, ``folder``, ``layer`` (the cut layer, or the tap),
    ``input_size`` ([height, width] pixels), ``flip_average``, ``shape`` (one entry's array
    shape), ``precision`` and ``storage`` (dtypes), ``weights`` (source, sha256 or seed),
    ``entries``, ``shards``, ``bytes``, ``unlisted_shards`` (complete shards an interrupted run
    left out of the manifest) and ``description`` (everything the fingerprint hashes);
    with ``views``, the dataset views stored there (see :func:`view_summaries`)."""
    d = store.description
    stats = store.stats()
    summary: dict[str, Any] = {
        "fingerprint": store.fingerprint, "folder": str(store.path),
        "layer": d.get("output_layer") or d.get("tap"),
        "input_size": list(d.get("input", {}).get("size", [])),
        "flip_average": bool(d.get("flip_average", False)),
        "shape": list(d.get("output_shape", [])),
        # fingerprints from before either key existed describe float32 by leaving it out
        "precision": d.get("precision", "float32"), "storage": d.get("storage", "float32"),
        "weights": dict(d.get("weights", {})),
        "entries": stats.entries, "shards": stats.shards, "bytes": stats.bytes,
        "unlisted_shards": stats.unlisted_shards, "description": d}
    if views:
        summary["views"] = view_summaries(store)
    return summary


def view_summaries(store: FeatureStore) -> list[dict[str, Any]]:
    """The dataset views kept in ``store``: ``id``, ``images``, ``classes``, ``skipped``
    (counts), ``root`` and ``created`` (ISO 8601); an unreadable view file has ``error``."""
    folder = store.views_dir()
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            view = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            found.append({"id": path.stem, "error": f"unreadable: {exc}"})
            continue
        found.append({"id": path.stem, "images": len(view.get("images", [])),
                      "classes": len(view.get("classes", [])),
                      "skipped": len(view.get("skipped", [])),
                      "root": view.get("root"), "created": view.get("created")})
    return found


def cache_json(cache_dir: Path, fingerprint: str | None = None,
               views: bool = False) -> dict[str, Any]:
    """``cache ls --json`` (and, with ``views``, ``cache info --json``): ``{"format": 1,
    "cache": folder, "stores": [store_summary ...], "entries": total, "bytes": total}``."""
    stores = [store_summary(store, views) for store in select_stores(cache_dir, fingerprint)]
    return {"format": 1, "cache": str(cache_dir), "stores": stores,
            "entries": sum(s["entries"] for s in stores),
            "bytes": sum(s["bytes"] for s in stores)}


def _weights_label(weights: dict) -> str:
    source = weights.get("source", "?")
    if source == "random":
        return f"random(seed={weights.get('seed')})"
    return f"{source}:{weights.get('sha256', '')[:8]}"


_SHORT_DTYPES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def format_store_list(cache_dir: Path) -> str:
    """One row per fingerprint under ``cache_dir``, with totals."""
    listing = cache_json(cache_dir)
    if not listing["stores"]:
        return f"{cache_dir}: empty (no fingerprints yet; run `pipeline run extract`)"
    header = f"{'fingerprint':<24} {'weights':<22} {'input':<14} {'layer':<16} {'shape':<12} " \
             f"{'dtypes':<8} {'entries':>8} {'shards':>6} {'bytes':>10}"
    lines = [f"cache {cache_dir}", header, "-" * len(header)]
    for row in listing["stores"]:
        size = "x".join(map(str, row["input_size"])) + ("+flip" if row["flip_average"] else "")
        shape = "x".join(map(str, row["shape"]))
        dtypes = "/".join(_SHORT_DTYPES.get(row[key], "?") for key in ("precision", "storage"))
        lines.append(f"{row['fingerprint']:<24} {_weights_label(row['weights']):<22} "
                     f"{size:<14} {row['layer'] or '?':<16} {shape:<12} {dtypes:<8} "
                     f"{row['entries']:>8,} {row['shards']:>6} "
                     f"{format_bytes(row['bytes']):>10}")
    lines += ["-" * len(header),
              f"{len(listing['stores'])} fingerprint(s), {listing['entries']:,} entries, "
              f"{format_bytes(listing['bytes'])}"]
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
    stores = cache_json(cache_dir, fingerprint, views=True)["stores"]
    if not stores:
        return f"{cache_dir}: empty"
    return "\n\n".join(_store_info(store) for store in stores)


def _store_info(store: dict[str, Any]) -> str:
    lines = [f"fingerprint {store['fingerprint']}", f"  folder   {store['folder']}",
             f"  entries  {store['entries']:,} in {store['shards']} shard(s), "
             f"{format_bytes(store['bytes'])}"]
    if store["unlisted_shards"]:
        lines.append(f"  note     {store['unlisted_shards']} complete shard(s) not yet in the "
                     f"manifest (left by an interrupted run; the next extract lists them)")
    lines.append("  made of  " + json.dumps(store["description"], sort_keys=True))
    for view in store["views"]:
        if "error" in view:
            lines.append(f"  view     {view['id']}.json: unreadable")
            continue
        lines.append(f"  view     {view['id']}: {view['images']} images, "
                     f"{view['classes']} classes, {view['skipped']} skipped, "
                     f"root {view['root']}, written {view['created'] or '?'}")
    return "\n".join(lines)


def reindex_cache(cache_dir: Path, fingerprint: str | None = None) -> list[tuple[str, int]]:
    """Index every store's manifest (or those whose fingerprint starts with ``fingerprint``)
    from the start, in the cache folder's index.sqlite: (fingerprint, entries) per store."""
    done = []
    for store in select_stores(cache_dir, fingerprint):
        with EntryIndex(store.path) as index:
            index.reindex()
            done.append((store.fingerprint, index.count()))
    return done


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
        keys.update(view.images.keys())
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
