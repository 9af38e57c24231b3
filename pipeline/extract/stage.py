"""The extract stage, declared: it needs nothing, reads the data folder and the backbone, and
leaves the dataset view and its cache entries. The work is :func:`pipeline.extract.run`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import metric_keys
from ..context import RunContext
from ..data.view import write_duplicates_csv, write_skipped_csv, write_view_csv
from ..stage import (
    BACKBONE,
    DATA_FOLDER,
    LABELS_TABLE,
    Output,
    Stage,
    StageReport,
    dataset_view_hash,
)


def _run(ctx: RunContext, folder: Path, progress: bool):
    """Extract, then copy the view, the skipped files and the duplicates into the run folder."""
    from .run import run_extract

    result = run_extract(ctx, progress=progress)
    # the stores as this run left them: what the lock records, not what a gc started meanwhile
    # made of them
    ctx.once(_VERSIONS, lambda: _store_versions(ctx))
    write_view_csv(result.view, folder / "dataset.csv")
    write_skipped_csv(result.skipped, folder / "skipped.csv")
    write_duplicates_csv(result.view, folder / "duplicates.csv")
    return result


_VERSIONS = "extract.store_versions"


def _store_versions(ctx: RunContext) -> dict[str, str]:
    return {part: store.version() for part, store in ctx.stores.items()}


def _outputs(ctx: RunContext) -> dict[str, Any]:
    """What the lock records of extract's outputs: the view's identity, and each store's
    version, so that a later check can tell that no entry was removed without asking for
    each image; and how many files the view left out, which an up-to-date rerun repeats
    without parsing the view (10^6 images: 0.8 GB for a moment)."""
    return {"dataset_view": dataset_view_hash(ctx),
            "stores": ctx.once(_VERSIONS, lambda: _store_versions(ctx)),
            "skipped": len(ctx.read_view().skipped)}


def _view_and_entries_missing(ctx: RunContext, entry: dict[str, Any]) -> str | None:
    outs = entry.get("outs", {})
    if dataset_view_hash(ctx) != outs.get("dataset_view"):
        return "outputs missing (the dataset view changed or is gone)"
    if outs.get("stores") and outs["stores"] == _store_versions(ctx):
        return None  # no store lost an entry since extract recorded them all present
    view = ctx.read_view()
    keys = view.images.keys()
    keys += [item.key for item in view.augmented_copies()]
    missing = sum(len(ctx.stores[part].missing(keys)) for part in ctx.stores)
    if missing:
        return (f"outputs missing ({missing} cached entries of the dataset view are "
                f"missing or damaged)")
    return None


def _files_still_left_out(ctx: RunContext, entry: dict[str, Any]) -> StageReport:
    """An up-to-date extract still leaves out the files its view skipped: say so, and record
    the count, so that the exit code of the run says it too. The count is the lock's
    ``entry``'s (one of an earlier release has none: the view is read)."""
    recorded = entry.get("outs", {}).get("skipped")
    try:
        skipped = recorded if isinstance(recorded, int) else len(ctx.read_view().skipped)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        skipped = 0
    lines = (f"  {skipped} file(s) left out of the dataset view, as before (listed in that "
             f"run's skipped.csv)",) if skipped else ()
    return StageReport(lines, {metric_keys.EXTRACT_IMAGES_SKIPPED: skipped})


STAGE = Stage(
    name="extract",
    help="runs VGG16 once over every image whose features are not cached yet for this "
         "backbone fingerprint, appends them to HDF5 shards, and writes the dataset view.",
    run=_run,
    params=("data", "backbone", "cache.dir", "stages.extract"),
    deps=(DATA_FOLDER, LABELS_TABLE, BACKBONE),
    outputs=(Output(missing=_view_and_entries_missing, record=_outputs),),
    when_up_to_date=_files_still_left_out,
)
