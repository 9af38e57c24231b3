"""The extract stage: run the frozen backbone once over every image not yet in the cache.

images (dataset scan) -> batches (threaded decode) -> features (VGG16) -> shards (cache), then
the dataset view. What is already cached for this backbone fingerprint is never computed again:
a rerun with nothing new imports no TensorFlow and runs no inference.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cache import FeatureStore, open_writer
from cache.faults import fault_point

from .augmented_views import (
    AugmentedViewsResult,
    augmentation_id,
    extract_views,
    pending_views,
)
from .batches import BatchReader
from .config import PipelineConfig
from .dataset import DatasetScan, display_path, scan_dataset, warn_about
from .errors import EmptyClassWarning, SkippedImageWarning
from .fingerprint import BackboneSpec, backbone_fingerprint, backbone_spec
from .views import DatasetView, SkippedFile, ViewImage, view_path, write_view

#: Fault points the extract stage passes, between the cache writer's (cache.faults.POINTS).
FAULT_POINTS = (
    "extract.batch",         # a batch's features handed to the writer, not yet committed
)


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
    augmented: AugmentedViewsResult = field(default_factory=AugmentedViewsResult)

    @property
    def images_per_second(self) -> float:
        """New images per second of the extraction loop (0 when nothing was extracted)."""
        return self.new / self.inference_seconds if self.inference_seconds > 0 else 0.0

    def metrics(self) -> dict[str, float | int | str]:
        """Flat ``extract.*`` metrics for the run's metrics.json."""
        return {"extract.fingerprint": self.fingerprint, "extract.images": self.images,
                "extract.images_new": self.new, "extract.images_cached": self.cached,
                "extract.images_skipped": len(self.skipped),
                "extract.duplicate_groups": len(self.view.duplicates),
                "extract.leakage_groups": sum(1 for g in self.view.duplicates
                                              if g["kind"] == "leakage"),
                "extract.seconds": round(self.seconds, 3),
                "extract.inference_seconds": round(self.inference_seconds, 3),
                "extract.images_per_second": round(self.images_per_second, 3),
                "extract.augmented_views_new": self.augmented.new,
                "extract.augmented_views_cached": self.augmented.cached,
                "extract.augmented_views_seconds": round(self.augmented.seconds, 3)}

    def summary(self) -> str:
        """A short human summary: new, cached, skipped, seconds, img/s."""
        rate = f"{self.images_per_second:.1f} img/s" if self.new else "no inference"
        lines = [f"extract: {self.new} new, {self.cached} cached, {len(self.skipped)} skipped "
                 f"in {self.seconds:.1f} s ({rate})",
                 f"  fingerprint {self.fingerprint}, cache {self.store_path}"]
        if self.view.augmented:
            lines.append(f"  augmented views: {self.augmented.new} new, {self.augmented.cached} "
                         f"cached ({self.view.augmented['count']} per training image) in "
                         f"{self.augmented.seconds:.1f} s")
        for item in self.skipped:
            lines.append(f"  skipped {display_path(item.path)}: {item.reason}")
        return "\n".join(lines)


def _decode_context(spec: BackboneSpec) -> str:
    # Images refused under these options and this decoder would be refused again; another
    # pixel limit or Pillow release retries them.
    return json.dumps({"max_pixels": spec.decode.max_pixels,
                       "pillow": metadata.version("pillow")}, sort_keys=True)


def run_extract(config: PipelineConfig, progress: bool = True) -> ExtractResult:
    """Extract features for every image under ``config.data.root`` that the cache lacks.

    Raises PipelineError subclasses for bad configuration or weights before any image is read.
    On an exception or Ctrl-C during extraction, every finished batch is committed to the cache
    before the error propagates, so the next run resumes where this one stopped.
    """
    started = time.perf_counter()
    spec = backbone_spec(config)
    fingerprint, description = backbone_fingerprint(spec)
    scan = scan_dataset(config.data)
    warn_about(scan)
    store = FeatureStore(config.cache.dir, fingerprint)

    first_path: dict[str, Path] = {}
    for image in scan.images:
        first_path.setdefault(image.sha256, image.path)
    context = _decode_context(spec)
    missing = store.missing(first_path)
    rejected = {s: r for s, r in store.rejected(context).items() if s in set(missing)}
    missing = [s for s in missing if s not in rejected]

    extracted: list[str] = []
    failures: dict[str, str] = dict(rejected)
    loop_seconds = 0.0
    infer = _LazyInference(spec)
    if missing:
        extracted, new_failures, loop_seconds = _extract_missing(
            config, spec, store, description, missing, first_path, context, progress, infer)
        failures.update(new_failures)

    view = _build_view(scan, fingerprint, failures)
    augmented = AugmentedViewsResult()
    views = config.stages.extract.augmented_views
    if views.count:
        view.augmented = {"id": augmentation_id(views), "count": views.count}
        augmented = _extract_augmented(config, spec, store, description, view, infer, progress)
    for item in view.skipped:
        warnings.warn(f"skipped {display_path(item.path)}: {item.reason}", SkippedImageWarning,
                      stacklevel=2)
    _warn_about_empty_classes(view, scan)
    view_file = view_path(config, store)
    write_view(view, view_file)
    return ExtractResult(fingerprint=fingerprint, store_path=store.path, view_file=view_file,
                         view=view, images=len(view.images), new=len(extracted),
                         cached=len(first_path) - len(extracted) - len(failures),
                         skipped=view.skipped, seconds=time.perf_counter() - started,
                         inference_seconds=loop_seconds, augmented=augmented)


class _LazyInference:
    """The compiled feature extractor, built on first call: TensorFlow is imported only by a
    run that has something to compute. (B, h, w, 3) float32 pixels -> numpy features."""

    def __init__(self, spec: BackboneSpec):
        self.spec = spec
        self._function = None

    def build(self) -> None:
        """Import TensorFlow and build the model now (so that timed loops exclude it)."""
        if self._function is None:
            from .backbone import build_feature_extractor, compiled_inference
            self._function = compiled_inference(build_feature_extractor(self.spec))

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.build()
        return self._function(pixels).numpy()


def _extract_augmented(config: PipelineConfig, spec: BackboneSpec, store: FeatureStore,
                       description: dict, view: DatasetView, infer: _LazyInference,
                       progress: bool) -> AugmentedViewsResult:
    """Cache the augmented views of the view's training images that the cache lacks."""
    keys = {key for key, _, _ in view.augmented_views("train")}  # a file twice: views once
    pending = pending_views(view, store.missing)
    result = AugmentedViewsResult()
    if pending:
        params = config.stages.extract
        with open_writer(store, description, shard_rows=params.shard_size,
                               flush_seconds=params.flush_seconds,
                               lock_timeout=config.cache.lock_timeout) as writer:
            pending = pending_views(view, store.missing)  # another run may have added some
            images = {image.sha256: image for image in view.select("train")}
            infer.build()
            result = extract_views(pending, images, Path(view.root), params.augmented_views,
                                   spec.decode, infer, writer, params.batch_size, progress)
    result.cached = len(keys) - len(store.missing(keys)) - result.new
    return result


def _extract_missing(config: PipelineConfig, spec: BackboneSpec, store: FeatureStore,
                     description: dict, missing: list[str], first_path: dict[str, Path],
                     context: str, progress: bool, infer: _LazyInference
                     ) -> tuple[list[str], dict[str, str], float]:
    """Decode, infer and commit ``missing`` images.

    Returns (sha256 extracted, sha256 -> failure reason, seconds of the extraction loop).
    """
    params = config.stages.extract
    extracted: list[str] = []
    failures: dict[str, str] = {}
    started = time.perf_counter()
    with open_writer(store, description, shard_rows=params.shard_size,
                           flush_seconds=params.flush_seconds,
                           lock_timeout=config.cache.lock_timeout) as writer:
        # Another extraction may have held the lock until now and cached some of these.
        todo = store.missing(missing)
        if not todo:
            return extracted, failures, time.perf_counter() - started
        if config.cluster.on_scheduler:
            def failed(sha: str, reason: str, permanent: bool) -> None:
                failures[sha] = reason
                if permanent:
                    writer.reject(sha, reason, context)

            started = time.perf_counter()
            extracted = _extract_on_cluster(config, spec, writer, todo, first_path, progress,
                                            failed)
            return extracted, failures, time.perf_counter() - started
        infer.build()
        reader = BatchReader(paths=[first_path[s] for s in todo], sha256=todo,
                             options=spec.decode, batch_size=params.batch_size,
                             workers=params.decode_workers)
        started = time.perf_counter()
        with tqdm(total=len(todo), unit="img", desc="extract",
                  disable=None if progress else True, dynamic_ncols=True) as bar:
            for batch in reader:
                if batch.ok.any():
                    features = infer(batch.pixels)
                    good = [todo[i] for i in batch.positions[batch.ok]]
                    writer.add(good, features[batch.ok])
                    extracted += good
                for i in batch.positions[~batch.ok]:
                    sha = todo[i]
                    failures[sha] = reader.failures.get(int(i), "could not be decoded")
                    if int(i) not in reader.transient:
                        writer.reject(sha, failures[sha], context)
                bar.update(len(batch.positions))
                fault_point("extract.batch")  # a batch handed to the writer, maybe uncommitted
    return extracted, failures, time.perf_counter() - started


def _extract_on_cluster(config: PipelineConfig, spec: BackboneSpec, writer, todo: list[str],
                        first_path: dict[str, Path], progress: bool, failed) -> list[str]:
    """Extract ``todo`` on the dask scheduler of ``cluster.scheduler``, one partition of
    ``shard_size`` images per task (see :mod:`pipeline.distributed_extract`); ``failed(sha256,
    reason, permanent)`` is told of each image that could not be decoded."""
    from .cluster import scheduler_client
    from .distributed_extract import extract_on_cluster, plan_partitions
    params = config.stages.extract
    partitions = plan_partitions(todo, first_path, params.shard_size)
    with scheduler_client(config.cluster.scheduler) as client:
        return extract_on_cluster(client, partitions, spec, writer.store.fingerprint, writer,
                                  params.batch_size, params.decode_workers,
                                  config.cluster.worker_resources, progress, failed)


def _warn_about_empty_classes(view: DatasetView, scan: DatasetScan) -> None:
    counts = view.counts()
    with_files = {image.label for image in scan.images}
    for label in view.classes:
        total = sum(counts[split][label] for split in counts)
        if total == 0 and label in with_files:
            warnings.warn(f"class {label!r} has no usable image: every file was skipped",
                          EmptyClassWarning, stacklevel=3)
        elif total:
            empty = [split for split in counts if counts[split][label] == 0]
            if empty:
                warnings.warn(f"class {label!r} has no image in split(s) {', '.join(empty)} "
                              f"({total} in all)", EmptyClassWarning, stacklevel=3)


def _build_view(scan: DatasetScan, fingerprint: str, failures: dict[str, str]) -> DatasetView:
    images = [ViewImage(path=i.relpath, label=i.label, split=i.split, sha256=i.sha256)
              for i in scan.images if i.sha256 not in failures]
    skipped = [SkippedFile(path=i.relpath, sha256=i.sha256, reason=failures[i.sha256])
               for i in scan.images if i.sha256 in failures]
    skipped += [SkippedFile(path=u.relpath, sha256="", reason=u.reason) for u in scan.unreadable]
    skipped.sort(key=lambda s: s.path)  # one listing in folder order, whatever failed where
    duplicates = [{"kind": g.kind, "sha256": g.sha256, "paths": list(g.relpaths),
                   "classes": list(g.labels), "splits": list(g.splits)} for g in scan.duplicates]
    return DatasetView(root=str(scan.root), classes=scan.classes, fingerprint=fingerprint,
                       images=images, skipped=skipped, duplicates=duplicates,
                       split_folders=scan.split_folders)
