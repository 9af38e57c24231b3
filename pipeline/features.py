"""Cached features of a dataset view, as labelled arrays for the heads.

Nothing here decodes an image or runs a convnet: features come from the :class:`FeatureStore`
of the view's backbone fingerprint, labels and splits from the view. ``FeatureView`` turns the
(N, h, w, c) tensors into the flat rows a scikit-learn estimator wants.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from cache import FeatureStore

from .errors import PipelineError
from .views import DatasetView, read_view


class MissingViewError(PipelineError):
    """No dataset view, or the view's features are not (all) in the cache: extract first."""


class FeatureView(TransformerMixin, BaseEstimator):
    """(N, h, w, c) feature tensors -> (N, d) rows.

    ``view``: ``flatten`` (d = h*w*c, 8,192 for (4, 4, 512)), ``gap`` (global average pool,
    d = c) or ``gmp`` (global max pool, d = c). Stateless: ``fit`` only checks the input.
    """

    def __init__(self, view: str = "flatten"):
        self.view = view

    def fit(self, X, y=None):  # noqa: N803 (scikit-learn's names)
        """Check that ``X`` is (N, h, w, c); nothing is learned."""
        self._check(X)
        self.n_features_in_ = int(np.prod(np.shape(X)[1:]))
        return self

    def transform(self, X):  # noqa: N803
        """(N, h, w, c) float32 -> (N, d) float32."""
        x = self._check(X)
        if self.view == "flatten":
            return x.reshape(len(x), -1)
        if self.view == "gap":
            return x.mean(axis=(1, 2))
        if self.view == "gmp":
            return x.max(axis=(1, 2))
        raise ValueError(f"unknown feature view {self.view!r}; expected flatten, gap or gmp")

    @staticmethod
    def _check(X) -> np.ndarray:  # noqa: N803
        x = np.asarray(X, dtype=np.float32)
        if x.ndim != 4:
            raise ValueError(f"expected (N, h, w, c) feature tensors, got shape {x.shape}")
        return x


@dataclass(frozen=True)
class LabelledSplit:
    """The features of one split: ``x`` (N, h, w, c) float32, ``y`` (N,) int class indices."""

    name: str
    x: np.ndarray
    y: np.ndarray
    sha256: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.y)


def find_view(store: FeatureStore, view_file: Path, augmented: bool = False) -> DatasetView:
    """The dataset view at ``view_file``, after checking the cache holds all its images'
    features (and, with ``augmented``, its augmented views')."""
    if not view_file.is_file():
        raise MissingViewError(f"no dataset view for this data and backbone in {store.path}: "
                               f"run `pipeline run extract` first")
    view = read_view(view_file)
    missing = store.missing(image.sha256 for image in view.images)
    if missing:
        raise MissingViewError(f"{len(missing)} of {len(view.images)} images of the dataset view "
                               f"have no cached features in {store.path}: run "
                               f"`pipeline run extract` again")
    views = [key for key, _, _ in view.augmented_views()] if augmented else []
    missing = store.missing(views)
    if missing:
        raise MissingViewError(f"{len(missing)} of {len(views)} augmented views of the dataset "
                               f"view are not cached in {store.path}: run `pipeline run "
                               f"extract` again, or set stages.heads.augmented_views: false")
    return view


def split_shas_and_labels(view: DatasetView, split: str, augmented: bool = False
                          ) -> tuple[list[str], np.ndarray]:
    """Cache keys and class indices (N,) int64 of one split, in view order; with
    ``augmented``, followed by the cached augmented views of the split's images (train only)."""
    images = view.select(split)
    keys = [i.sha256 for i in images]
    labels = [view.label_index(i.label) for i in images]
    if augmented:
        for key, image, _ in view.augmented_views(split):
            keys.append(key)
            labels.append(view.label_index(image.label))
    return keys, np.array(labels, dtype=np.int64)


def load_split(store: FeatureStore, view: DatasetView, split: str,
               augmented: bool = False) -> LabelledSplit:
    """All features of ``split`` in memory, as a :class:`LabelledSplit` (with ``augmented``,
    the cached augmented views too)."""
    shas, labels = split_shas_and_labels(view, split, augmented)
    x = store.get(shas) if shas else np.empty((0, *store.feature_shape), np.float32)
    return LabelledSplit(split, x, labels, tuple(shas))


def check_trainable(view: DatasetView, selected_on: str) -> None:
    """:class:`PipelineError` unless ``view`` has 2+ classes and non-empty train and validation
    splits; ``selected_on`` says what validation is for, in the message."""
    if len(view.classes) < 2:
        raise PipelineError(f"the dataset view has {len(view.classes)} class(es); a classifier "
                            f"needs at least 2 class folders")
    for split in ("train", "validation"):
        if not view.select(split):
            raise PipelineError(f"the {split} split has no images; {selected_on} (check "
                                f"data.split or the split folders)")
