"""Cached augmented copies: K augmented copies of each training image through the frozen base.

Augmentation usually costs a pass of the base per image per epoch. Here each training image is
augmented K times, once, and the K feature tensors are cached like any image's, under keys
derived from the image's content hash, the transforms and seed, and the copy number
(:func:`pipeline.data.view.augmented_key`). Each copy's transforms are seeded by its key, so a
copy is the same whenever and wherever it is computed, and heads then train on original + K
copies at the cost of K extra passes of the base, however many epochs and sweeps follow.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cache.files import sha256_text

from ..config import AugmentedCopiesConfig
from ..context import RunContext
from ..data.batches import BatchReader
from ..data.names import display_path
from ..data.view import DatasetView
from ..errors import SkippedImageWarning
from ..nn.backend import check_backend
from ._writers import open_writers
from .loop import Inference

AUGMENTATION_FORMAT = 2  # 2: independent draws per transform (1 reused one seed)


def augmentation_id(params: AugmentedCopiesConfig) -> str:
    """Identifies the transforms, the seed, and the releases of Keras and of its backend's
    library (TensorFlow, JAX or PyTorch: their random streams draw the transforms, so each
    backend makes copies of its own): part of every augmented copy's cache key. (The payload
    is that of earlier releases, key for key: cached copies keep their keys.)"""
    backend = check_backend()  # its name is its package's: tensorflow, jax, torch
    payload = {"format": AUGMENTATION_FORMAT, "augmentation": params.augmentation.model_dump(),
               "seed": params.seed, "keras": metadata.version("keras"),
               backend: metadata.version(backend)}
    return sha256_text(json.dumps(payload, sort_keys=True))[:16]


@dataclass
class AugmentedCopiesResult:
    """What the augmented-copies pass did."""

    new: int = 0
    cached: int = 0
    failed_images: int = 0
    seconds: float = 0.0


def pending_copies(view: DatasetView, present: Callable[[list[str]], list[str]]
                   ) -> dict[str, list[tuple[str, int]]]:
    """Image sha256 -> ``(key, copy number)`` of its augmented copies the cache lacks;
    ``present(keys)`` returns the keys the cache does not hold (``FeatureStore.missing``)."""
    rows = view.augmented_copies("train")
    missing = set(present([row.key for row in rows]))
    pending: dict[str, list[tuple[str, int]]] = {}
    for key, image, k in rows:
        if key in missing:  # a file twice in train has its augmented copies once
            missing.discard(key)
            pending.setdefault(image.sha256, []).append((key, k))
    return pending


def _lacking_any_part(ctx: RunContext) -> Callable[[list[str]], list[str]]:
    """``keys -> the keys some part's store lacks``, in first-seen order."""
    def lacking(keys: list[str]) -> list[str]:
        absent = set().union(*(store.missing(keys) for store in ctx.stores.values()))
        return list(dict.fromkeys(key for key in keys if key in absent))
    return lacking


def extract_augmented_copies(ctx: RunContext, view: DatasetView,
                             inferences: Callable[[tuple[str, ...]], Inference],
                             progress: bool) -> AugmentedCopiesResult:
    """Cache the augmented copies of ``view``'s training images that the cache lacks (every
    part: the output and the taps); ``inferences(parts)`` gives the backbone computing
    ``parts``."""
    params = ctx.config.stages.extract
    keys = {row.key for row in view.augmented_copies("train")}  # a file twice: copies once
    lacking = _lacking_any_part(ctx)
    result = AugmentedCopiesResult()
    if pending_copies(view, lacking):
        with open_writers(ctx, tuple(ctx.stores)) as (_, writers):
            pending = pending_copies(view, lacking)  # another run may have added some
            wanted = [key for items in pending.values() for key, _ in items]
            parts = tuple(part for part, store in ctx.stores.items() if store.missing(wanted))

            def add(new_keys: list[str], rows: dict[str, np.ndarray]) -> None:
                for part, part_rows in rows.items():
                    writers[part].add(new_keys, part_rows)

            infer = inferences(parts)
            infer.build()
            result = extract_copies(pending, view, params.augmented_copies, ctx.spec.decode,
                                    infer, add, params.batch_size, params.decode_workers,
                                    progress)
    result.cached = len(keys) - len(lacking(list(keys))) - result.new
    return result


def extract_copies(pending: dict[str, list[tuple[str, int]]], view: DatasetView,
                   params: AugmentedCopiesConfig, decode,
                   infer: Callable[[np.ndarray], dict[str, np.ndarray]],
                   add: Callable[[list[str], dict[str, np.ndarray]], None], batch_size: int,
                   decode_workers: int, progress: bool) -> AugmentedCopiesResult:
    """Decode each image of ``pending`` once (the threaded batch reader), augment it into its
    missing copies, run the base on batches of ``batch_size`` copies and ``add(keys, rows)``.

    ``infer``: (B, h, w, 3) float32 pixels -> ``{part: (B, ...)}`` features. An image that no
    longer decodes (changed or removed since the scan) loses its copies for this run, with a
    :class:`SkippedImageWarning`.
    """
    from ..nn.augment import augment_image, build_augmentation, copy_seed

    augmentation = build_augmentation(params.augmentation, params.seed)
    started = time.perf_counter()
    result = AugmentedCopiesResult()
    images = {image.sha256: image for image in view.select("train")}
    shas = list(pending)
    reader = BatchReader(paths=[Path(view.root) / images[s].path for s in shas], sha256=shas,
                         options=decode, batch_size=batch_size, workers=decode_workers)
    keys: list[str] = []
    pixels: list[np.ndarray] = []

    def flush() -> None:
        if keys:
            add(list(keys), infer(np.stack(pixels)))
            result.new += len(keys)
            keys.clear()
            pixels.clear()

    total = sum(len(v) for v in pending.values())
    with tqdm(total=total, unit="copy", desc="augmented copies",
              disable=None if progress else True, dynamic_ncols=True) as bar:
        for batch in reader:
            for row, position in enumerate(batch.positions):
                sha = shas[position]
                wanted = pending[sha]
                if not batch.ok[row]:
                    reason = reader.failures.get(int(position), "could not be decoded")
                    warnings.warn(f"no augmented copies of {display_path(images[sha].path)}: "
                                  f"{reason}", SkippedImageWarning, stacklevel=2)
                    result.failed_images += 1
                    bar.update(len(wanted))
                    continue
                image = batch.pixels[row]
                for key, _ in wanted:
                    augmented = image if augmentation is None else \
                        augment_image(augmentation, image, copy_seed(key))
                    keys.append(key)
                    pixels.append(augmented)
                    if len(keys) >= batch_size:
                        flush()
                bar.update(len(wanted))
        flush()
    result.seconds = time.perf_counter() - started
    return result
