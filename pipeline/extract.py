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
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cache import FeatureStore

from .batches import BatchReader
from .config import PipelineConfig
from .dataset import DatasetScan, scan_dataset, warn_about
from .errors import EmptyClassWarning, SkippedImageWarning
from .fingerprint import BackboneSpec, backbone_fingerprint, backbone_spec
from .views import DatasetView, SkippedFile, ViewImage, view_path, write_view


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

    @property
    def images_per_second(self) -> float:
        """New images per second of the extraction loop (0 when nothing was extracted)."""
        return self.new / self.inference_seconds if self.inference_seconds > 0 else 0.0

    def metrics(self) -> dict[str, float | int | str]:
        """Flat ``extract.*`` metrics for the run's metrics.json."""
        return {"extract.fingerprint": self.fingerprint, "extract.images": self.images,
                "extract.images_new": self.new, "extract.images_cached": self.cached,
                "extract.images_skipped": len(self.skipped),
                "extract.seconds": round(self.seconds, 3),
                "extract.inference_seconds": round(self.inference_seconds, 3),
                "extract.images_per_second": round(self.images_per_second, 3)}

    def summary(self) -> str:
        """A short human summary: new, cached, skipped, seconds, img/s."""
        lines = [f"extract: {self.new} new, {self.cached} cached, {len(self.skipped)} skipped "
                 f"in {self.seconds:.1f} s ({self.images_per_second:.1f} img/s)",
                 f"  fingerprint {self.fingerprint}, cache {self.store_path}"]
        for item in self.skipped:
            lines.append(f"  skipped {item.path}: {item.reason}")
        return "\n".join(lines)


def _decode_context(spec: BackboneSpec) -> str:
    # Images refused under these options would be refused again; other options retry them.
    return json.dumps({"max_pixels": spec.decode.max_pixels}, sort_keys=True)


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

    context = _decode_context(spec)
    rejected = store.rejected(context)
    first_path: dict[str, Path] = {}
    for image in scan.images:
        first_path.setdefault(image.sha256, image.path)
    missing = [s for s in store.missing(first_path) if s not in rejected]
    cached = len(first_path) - len(missing) - len(rejected.keys() & first_path.keys())

    failures: dict[str, str] = {}
    loop_seconds = 0.0
    if missing:
        failures, loop_seconds = _extract_missing(config, spec, store, description, missing,
                                                  [first_path[s] for s in missing], context,
                                                  progress)
    failures.update({s: r for s, r in rejected.items() if s in first_path})

    view = _build_view(scan, fingerprint, failures)
    for item in view.skipped:
        warnings.warn(f"skipped {item.path}: {item.reason}", SkippedImageWarning, stacklevel=2)
    _warn_about_empty_classes(view, scan)
    view_file = view_path(config, store)
    write_view(view, view_file)
    extracted = sum(1 for s in missing if s not in failures)
    return ExtractResult(fingerprint=fingerprint, store_path=store.path, view_file=view_file,
                         view=view, images=len(view.images), new=extracted, cached=cached,
                         skipped=view.skipped, seconds=time.perf_counter() - started,
                         inference_seconds=loop_seconds)


def _extract_missing(config: PipelineConfig, spec: BackboneSpec, store: FeatureStore,
                     description: dict, missing: list[str], paths: list[Path], context: str,
                     progress: bool) -> tuple[dict[str, str], float]:
    """Decode, infer and commit ``missing`` images; returns (sha256 -> failure reason, seconds)."""
    # Imported here, not at the top: TensorFlow takes seconds to import, and a run with nothing
    # to extract must not pay for it.
    from .backbone import build_feature_extractor, compiled_inference

    params = config.stages.extract
    infer = compiled_inference(build_feature_extractor(spec))
    reader = BatchReader(paths=paths, sha256=missing, options=spec.decode,
                         batch_size=params.batch_size, workers=params.decode_workers)
    failures: dict[str, str] = {}
    started = time.perf_counter()
    with store.open_writer(description, shard_rows=params.shard_size,
                           flush_seconds=params.flush_seconds,
                           lock_timeout=config.cache.lock_timeout) as writer, \
            tqdm(total=len(missing), unit="img", desc="extract",
                 disable=None if progress else True, dynamic_ncols=True) as bar:
        for batch in reader:
            if batch.ok.any():
                features = infer(batch.pixels).numpy()
                good = np.flatnonzero(batch.ok)
                writer.add([missing[i] for i in batch.positions[good]], features[good])
            for i in batch.positions[~batch.ok]:
                sha = missing[i]
                failures[sha] = reader.failures.get(int(i), "could not be decoded")
                writer.reject(sha, failures[sha], context)
            bar.update(len(batch.positions))
    return failures, time.perf_counter() - started


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
    duplicates = [{"kind": g.kind, "sha256": g.sha256, "paths": list(g.relpaths),
                   "classes": list(g.labels), "splits": list(g.splits)} for g in scan.duplicates]
    return DatasetView(root=str(scan.root), classes=scan.classes, fingerprint=fingerprint,
                       images=images, skipped=skipped, duplicates=duplicates,
                       split_folders=scan.split_folders)
