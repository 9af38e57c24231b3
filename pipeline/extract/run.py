"""The extract stage: run the frozen backbone once over every image not yet in the cache.

images (dataset scan) -> batches (threaded decode) -> features (VGG16) -> shards (cache), then
the dataset view. What is already cached for this backbone fingerprint is never computed again:
a rerun with nothing new imports no TensorFlow and runs no inference.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from cache.hashstate import open_hash_state

from .. import metric_keys as keys
from ..backbone import BackboneSpec
from ..context import RunContext
from ..data.batches import BatchReader
from ..data.bulk import gc_paused
from ..data.names import display_path
from ..data.scan import DatasetScan, scan_dataset, warn_about
from ..data.table import ImageTable
from ..data.view import AugmentedCopiesSpec, DatasetView, SkippedFile
from ..errors import EmptyClassWarning, SkippedImageWarning
from ._writers import open_writers
from .augmented import AugmentedCopiesResult, augmentation_id, extract_augmented_copies
from .loop import Inference, extract_batches

if TYPE_CHECKING:  # imported when extraction runs on a scheduler: it brings in dask
    from .cluster import SchedulerSession


@dataclass
class ExtractResult:
    """What one extract run did."""

    fingerprint: str
    store_path: Path
    view_file: Path
    view: DatasetView
    images: int                # image files in the view (duplicates counted)
    new: int                   # distinct images whose features were computed by this run
    cached: int                # distinct images already in the cache
    skipped: list[SkippedFile] = field(default_factory=list)
    seconds: float = 0.0       # whole stage, wall clock
    inference_seconds: float = 0.0  # decode + infer + write loop, wall clock
    augmented: AugmentedCopiesResult = field(default_factory=AugmentedCopiesResult)

    @property
    def images_per_second(self) -> float:
        """New images per second of the extraction loop (0 when nothing was extracted)."""
        return self.new / self.inference_seconds if self.inference_seconds > 0 else 0.0

    def metrics(self) -> dict[str, float | int | str]:
        """Flat ``extract.*`` metrics for the run's metrics.json."""
        return {keys.EXTRACT_FINGERPRINT: self.fingerprint, keys.EXTRACT_IMAGES: self.images,
                keys.EXTRACT_IMAGES_NEW: self.new, keys.EXTRACT_IMAGES_CACHED: self.cached,
                keys.EXTRACT_IMAGES_SKIPPED: len(self.skipped),
                keys.EXTRACT_DUPLICATE_GROUPS: len(self.view.duplicates),
                keys.EXTRACT_LEAKAGE_GROUPS: sum(1 for g in self.view.duplicates
                                                 if g.kind == "leakage"),
                keys.EXTRACT_SECONDS: round(self.seconds, 3),
                keys.EXTRACT_INFERENCE_SECONDS: round(self.inference_seconds, 3),
                keys.EXTRACT_IMAGES_PER_SECOND: round(self.images_per_second, 3),
                keys.EXTRACT_AUGMENTED_COPIES_NEW: self.augmented.new,
                keys.EXTRACT_AUGMENTED_COPIES_CACHED: self.augmented.cached,
                keys.EXTRACT_AUGMENTED_COPIES_SECONDS: round(self.augmented.seconds, 3)}

    def summary(self) -> str:
        """A short human summary: new, cached, skipped, seconds, img/s."""
        rate = f"{self.images_per_second:.1f} img/s" if self.new else "no inference"
        lines = [f"extract: {self.new} new, {self.cached} cached, {len(self.skipped)} skipped "
                 f"in {self.seconds:.1f} s ({rate})",
                 f"  fingerprint {self.fingerprint}, cache {self.store_path}"]
        if self.view.taps:
            kept = "" if self.view.keep_output else "; the output tensor is not kept"
            taps = ", ".join(f"{tap} ({fp})" for tap, fp in self.view.taps.items())
            lines.append(f"  taps {taps}{kept}")
        if self.view.augmented:
            lines.append(f"  augmented copies: {self.augmented.new} new, {self.augmented.cached} "
                         f"cached ({self.view.augmented.count} per training image) in "
                         f"{self.augmented.seconds:.1f} s")
        for item in self.skipped:
            lines.append(f"  skipped {display_path(item.path)}: {item.reason}")
        return "\n".join(lines)


def _decode_context(spec: BackboneSpec) -> str:
    # Images refused under these options and this decoder would be refused again; another
    # pixel limit or Pillow release retries them.
    return json.dumps({"max_pixels": spec.decode.max_pixels,
                       "pillow": metadata.version("pillow")}, sort_keys=True)


class Inferences:
    """One :class:`Inference` per set of parts, built when first asked for (the main pass and
    the augmented copies usually need the same parts, and then share the model)."""

    def __init__(self, ctx: RunContext):
        self.spec = ctx.spec
        self._built: dict[tuple[str, ...], Inference] = {}

    def __call__(self, parts: tuple[str, ...]) -> Inference:
        """The inference computing ``parts`` (in ``spec.parts`` order)."""
        parts = tuple(part for part in self.spec.parts if part in parts)
        if parts not in self._built:
            self._built[parts] = Inference(self.spec, parts)
        return self._built[parts]


class DistinctImages:
    """The distinct contents among the images of a table (files with the same bytes are one
    content): their sha256 and the position of the first image of each."""

    def __init__(self, table: ImageTable):
        self._table = table
        # sorted sha256 (S64), and the table position of the first image of each
        self._sha256, self._first = np.unique(table.sha256, return_index=True)

    def __len__(self) -> int:
        return len(self._sha256)

    def keys(self) -> list[str]:
        """The sha256 of each content once, in the order of their first images."""
        return [key.decode("ascii") for key in self._table.sha256[np.sort(self._first)].tolist()]

    def paths_of(self, keys: list[str], root: str) -> dict[str, str]:
        """sha256 -> the path (under ``root``) of the first image of that content, for each
        of ``keys`` (KeyError for a key no image has)."""
        wanted = np.array(keys, "S64").reshape(-1)
        at = np.minimum(np.searchsorted(self._sha256, wanted), max(len(self) - 1, 0))
        if len(wanted) and (not len(self) or (self._sha256[at] != wanted).any()):
            raise KeyError("a key no image of the table has")
        paths = self._table.path.take(self._first[at])
        return {key: os.path.join(root, path) for key, path in zip(keys, paths)}


def lacking(ctx: RunContext, keys: list[str]) -> dict[str, set[str]]:
    """For each part the cache keeps, the keys among ``keys`` whose store lacks it."""
    return {part: set(store.missing(keys)) for part, store in ctx.stores.items()}


def run_extract(ctx: RunContext, progress: bool = True) -> ExtractResult:
    """Extract the output and the taps of every image under ``data.root`` (or that
    ``data.labels`` lists) that the cache lacks (an image that lacks one part goes through the
    backbone once, for the parts it lacks; what a store already holds is never written again).

    With ``cluster.scheduler`` an address, the scheduler's workers hash the files the hash
    state cannot vouch for and extract what the cache lacks (:mod:`pipeline.extract.cluster`);
    this process then reads no image.

    Raises PipelineError subclasses for bad configuration or weights before any image is read.
    On an exception or Ctrl-C during extraction, every finished batch is committed to the cache
    before the error propagates, so the next run resumes where this one stopped.
    """
    started = time.perf_counter()
    config = ctx.config
    session = None
    if config.cluster.on_scheduler:  # its workers hash and extract; connected when needed
        from .cluster import SchedulerSession
        session = SchedulerSession(config.cluster, config.stages.extract.shard_size,
                                   config.stages.extract.decode_workers)
    try:
        return _run_extract(ctx, session, progress, started)
    finally:
        if session is not None:
            session.close()


def _run_extract(ctx: RunContext, session: SchedulerSession | None, progress: bool,
                 started: float) -> ExtractResult:
    """:func:`run_extract`'s work, with the cluster of ``session`` (None: in this process)."""
    config, store = ctx.config, ctx.store
    with gc_paused():  # per-image records, here and for the view: see pipeline.data.bulk
        hash_state = open_hash_state(config.cache.dir)
        try:
            scan = scan_dataset(config.data, hash_state=hash_state, rehash=ctx.rehash,
                                listing=ctx.data_listing(),
                                hash_files=session.hash_files if session else None)
        finally:
            if hash_state is not None:
                hash_state.close()
        warn_about(scan)
        # from here on the images are columns (a few arrays), not a record an image
        table = scan.image_table()
        scan = dataclasses.replace(scan, images=[])
        distinct = DistinctImages(table)

        context = _decode_context(ctx.spec)
        # images refused before (rejects.jsonl) are asked about apart: they are absent, and
        # an ask with every key present is one the entry index remembers (cache.index)
        refused = store.rejected(context)
        keys = distinct.keys()
        wanted = [key for key in keys if key not in refused]
        absent = set().union(*lacking(ctx, wanted).values())
        missing = [key for key in wanted if key in absent]
        again = [key for key in keys if key in refused]
        # the keys of every image are asked again after extraction: not held meanwhile
        del keys, wanted, absent
        still_absent = set().union(*lacking(ctx, again).values()) if again else set()
        rejected = {key: refused[key] for key in again if key in still_absent}

    extracted: list[str] = []
    failures: dict[str, str] = dict(rejected)
    loop_seconds = 0.0
    inferences = Inferences(ctx)
    if missing:
        extracted, new_failures, loop_seconds = _extract_missing(
            ctx, missing, distinct.paths_of(missing, str(scan.root)), context, progress,
            inferences, session)
        failures.update(new_failures)
        if not new_failures:  # all cached now: remembered, the next command's ask is cheap
            lacking(ctx, [key for key in distinct.keys() if key not in refused])

    with gc_paused():
        view = _build_view(table, scan, ctx, failures)
    augmented = AugmentedCopiesResult()
    copies = config.stages.extract.augmented_copies
    if copies.count:
        view.augmented = AugmentedCopiesSpec(id=augmentation_id(copies), count=copies.count)
        augmented = extract_augmented_copies(ctx, view, inferences, progress)
    # files the labels table lists but that do not exist had one MissingImageWarning for all
    # (warn_about): a table of a larger collection may well name thousands
    not_there = {item.relpath for item in scan.missing}
    for item in view.skipped:
        if item.path not in not_there:
            warnings.warn(f"skipped {display_path(item.path)}: {item.reason}",
                          SkippedImageWarning, stacklevel=3)
    _warn_about_empty_classes(view, table)
    with gc_paused():
        view_file = ctx.write_view(view)
    return ExtractResult(fingerprint=ctx.fingerprint.id, store_path=store.path,
                         view_file=view_file, view=view, images=len(view.images),
                         new=len(extracted),
                         cached=len(distinct) - len(extracted) - len(failures),
                         skipped=view.skipped, seconds=time.perf_counter() - started,
                         inference_seconds=loop_seconds, augmented=augmented)


def _extract_missing(ctx: RunContext, missing: list[str], first_path: dict[str, str],
                     context: str, progress: bool, inferences: Inferences,
                     session: SchedulerSession | None
                     ) -> tuple[list[str], dict[str, str], float]:
    """Decode, infer and commit the parts ``missing`` images lack, here or on the cluster of
    ``session``; ``first_path``: the file to read for each of them.

    Returns (sha256 extracted, sha256 -> failure reason, seconds of the extraction loop).
    """
    config = ctx.config
    params = config.stages.extract
    extracted: list[str] = []
    failures: dict[str, str] = {}
    started = time.perf_counter()
    with open_writers(ctx, tuple(ctx.stores)) as (home, writers):
        # Another extraction may have held the locks until now and cached some of these.
        absent = lacking(ctx, missing)
        todo = [key for key in missing if any(key in keys for keys in absent.values())]
        if not todo:
            return extracted, failures, time.perf_counter() - started
        parts = tuple(part for part, keys in absent.items() if keys & set(todo))

        def failed(sha: str, reason: str, permanent: bool) -> None:
            failures[sha] = reason
            if permanent:
                home.reject(sha, reason, context)

        if session is not None:
            started = time.perf_counter()
            extracted = session.extract(ctx, parts, {p: writers[p] for p in parts}, todo,
                                        first_path, progress, failed)
            return extracted, failures, time.perf_counter() - started

        def keep(keys: list[str], rows: dict[str, np.ndarray]) -> None:
            for part, part_rows in rows.items():
                writers[part].add(keys, part_rows)
            extracted.extend(keys)

        infer = inferences(parts)
        infer.build()
        reader = BatchReader(paths=[Path(first_path[s]) for s in todo], sha256=todo,
                             options=ctx.spec.decode, batch_size=params.batch_size,
                             workers=params.decode_workers)
        started = time.perf_counter()
        with tqdm(total=len(todo), unit="img", desc="extract",
                  disable=None if progress else True, dynamic_ncols=True) as bar:
            extract_batches(reader, todo, infer, keep, failed, bar.update)
    return extracted, failures, time.perf_counter() - started


def _warn_about_empty_classes(view: DatasetView, found: ImageTable) -> None:
    """Warn about classes of ``view`` with no image in a split; ``found``: every image the
    scan found, those that failed included."""
    counts = view.counts()
    with_files = {found.classes[code] for code in np.unique(found.label).tolist()}
    for label in view.classes:
        total = sum(counts[split][label] for split in counts)
        if total == 0 and label in with_files:
            warnings.warn(f"class {label!r} has no usable image: every file was skipped",
                          EmptyClassWarning, stacklevel=4)
        elif total:
            empty = [split for split in counts if counts[split][label] == 0]
            if empty:
                warnings.warn(f"class {label!r} has no image in split(s) {', '.join(empty)} "
                              f"({total} in all)", EmptyClassWarning, stacklevel=4)


def _build_view(found: ImageTable, scan: DatasetScan, ctx: RunContext,
                failures: dict[str, str]) -> DatasetView:
    """The view of the images ``found`` (the scan's, as a table) but those that ``failures``
    names (sha256 -> why), which it lists as skipped with the scan's unreadable and missing
    files."""
    failed = np.isin(found.sha256, np.array(list(failures), "S64")) if failures else \
        np.zeros(len(found), bool)
    images = found[~failed]
    skipped = [SkippedFile(path=i.path, sha256=i.sha256, reason=failures[i.sha256])
               for i in found[failed]]
    skipped += [SkippedFile(path=u.relpath, sha256="", reason=u.reason)
                for u in scan.unreadable + scan.missing]
    skipped.sort(key=lambda s: s.path)  # one listing in folder order, whatever failed where
    return DatasetView(root=str(scan.root), classes=scan.classes,
                       fingerprint=ctx.fingerprint.id, images=images, skipped=skipped,
                       duplicates=list(scan.duplicates), split_folders=scan.split_folders,
                       taps={tap: fp.id for tap, fp in ctx.tap_fingerprints.items()},
                       keep_output=ctx.spec.keep_output,
                       labels=str(scan.labels) if scan.labels else "")
