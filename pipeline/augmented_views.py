"""Cached augmented views: K augmented copies of each training image through the frozen base.

Augmentation usually costs a pass of the base per image per epoch. Here each training image is
augmented K times, once, and the K feature tensors are cached like any image's, under keys
derived from the image's content hash, the transforms and seed, and the view number
(:func:`pipeline.views.augmented_key`). Each view's transforms are seeded by its key, so a view
is the same whenever and wherever it is computed, and heads then train on original + K views
at the cost of K extra passes of the base, however many epochs and sweeps follow.
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

from cache import ShardWriter
from cache.files import sha256_text

from .config import AugmentedViewsConfig
from .dataset import display_path
from .errors import SkippedImageWarning
from .images import DecodeOptions, ImageDecodeError, decode_file
from .views import DatasetView, ViewImage

AUGMENTED_VIEW_FORMAT = 2  # 2: independent draws per transform (1 reused one seed)


def augmentation_id(params: AugmentedViewsConfig) -> str:
    """Identifies the transforms, the seed and the Keras and TensorFlow releases (whose random
    streams the transforms draw from): part of every augmented view's cache key."""
    payload = {"format": AUGMENTED_VIEW_FORMAT, "augmentation": params.augmentation.model_dump(),
               "seed": params.seed, "keras": metadata.version("keras"),
               "tensorflow": metadata.version("tensorflow")}
    return sha256_text(json.dumps(payload, sort_keys=True))[:16]


@dataclass
class AugmentedViewsResult:
    """What the augmented-view pass did."""

    new: int = 0
    cached: int = 0
    failed_images: int = 0
    seconds: float = 0.0


def pending_views(view: DatasetView, present: Callable[[list[str]], list[str]]
                  ) -> dict[str, list[tuple[str, int]]]:
    """Image sha256 -> ``(key, view number)`` of its augmented views the cache lacks;
    ``present(keys)`` returns the keys the cache does not hold (``FeatureStore.missing``)."""
    rows = view.augmented_views("train")
    missing = set(present([key for key, _, _ in rows]))
    pending: dict[str, list[tuple[str, int]]] = {}
    for key, image, k in rows:
        if key in missing:  # a file copied twice into train has its views once
            missing.discard(key)
            pending.setdefault(image.sha256, []).append((key, k))
    return pending


def extract_views(pending: dict[str, list[tuple[str, int]]], images: dict[str, ViewImage],
                  root: Path, params: AugmentedViewsConfig, decode: DecodeOptions,
                  infer: Callable[[np.ndarray], np.ndarray], writer: ShardWriter,
                  batch_size: int, progress: bool) -> AugmentedViewsResult:
    """Decode each image of ``pending`` once, augment it into its missing views, run the base
    on batches of ``batch_size`` views and add them to ``writer``.

    ``infer``: (B, h, w, 3) float32 pixels -> (B, *feature shape) features. An image that no
    longer decodes (changed or removed since the scan) loses its views for this run, with a
    :class:`SkippedImageWarning`.
    """
    from .augment import augment_image, build_augmentation, view_seed

    augmentation = build_augmentation(params.augmentation, params.seed)
    started = time.perf_counter()
    result = AugmentedViewsResult()
    keys: list[str] = []
    pixels: list[np.ndarray] = []

    def flush() -> None:
        if keys:
            writer.add(list(keys), np.asarray(infer(np.stack(pixels))))
            result.new += len(keys)
            keys.clear()
            pixels.clear()

    total = sum(len(v) for v in pending.values())
    with tqdm(total=total, unit="view", desc="augmented views",
              disable=None if progress else True, dynamic_ncols=True) as bar:
        for sha, wanted in pending.items():
            try:
                image = decode_file(root / images[sha].path, decode, sha).astype(np.float32)
            except ImageDecodeError as exc:
                warnings.warn(f"no augmented views of {display_path(images[sha].path)}: {exc}",
                              SkippedImageWarning, stacklevel=2)
                result.failed_images += 1
                bar.update(len(wanted))
                continue
            for key, _ in wanted:
                augmented = image if augmentation is None else \
                    augment_image(augmentation, image, view_seed(key))
                keys.append(key)
                pixels.append(augmented)
                if len(keys) >= batch_size:
                    flush()
            bar.update(len(wanted))
        flush()
    result.seconds = time.perf_counter() - started
    return result
