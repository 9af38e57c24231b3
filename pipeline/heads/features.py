"""What a head reads of the cache, as rows: parts of the output tensor and taps, normalised
part by part, concatenated.

A head's ``features`` are parts: ``flatten``, ``gap`` and ``gmp`` take the (N, h, w, c) output
tensor whole, averaged or maximised over positions; a tap (``block4_conv3.gap``) is an (N, c)
vector cached as it is. Each part is normalised on its own (``none``; ``l2``: unit length;
``power``: signed square root, then unit length) before the parts are put side by side, so
that a part with large values does not drown the others. Features arrive as
``{source: array}``, the source of flatten, gap and gmp being the output (``output``) and of a
tap the tap itself; a bare (N, h, w, c) array stands for the output. Every scikit-learn head
starts with :class:`FeatureRows`; the dense head builds the same steps from Keras layers.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from ..config import OUTPUT
from ..config.heads import OUTPUT_PARTS, feature_parts

#: The names earlier releases gave :class:`FeatureRows` in the skops files of saved heads: its
#: module before the heads package existed (``FORMER_PATH``), and its name before it was
#: renamed from FeatureView. Both load as :class:`FeatureRows` (:mod:`pipeline.heads._sklearn`).
FORMER_PATH = "pipeline.features.FeatureView"
FORMER_NAMES = (FORMER_PATH, f"{__name__}.FeatureView")
_EPSILON = 1e-12

#: Cached features of some images, by source: the output tensor, or a tap.
Features = Mapping[str, np.ndarray]


def source_of(part: str) -> str:
    """The cached source a part reads: the output for flatten, gap and gmp, a tap for
    itself."""
    return OUTPUT if part in OUTPUT_PARTS else part


def sources_of(features: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The sources a head's ``features`` read, in order of first use."""
    return tuple(dict.fromkeys(source_of(part) for part in feature_parts(features)))


def as_features(x: Features | np.ndarray) -> Features:
    """``x`` as ``{source: array}`` (a bare array is the output tensor)."""
    return {OUTPUT: x} if isinstance(x, np.ndarray) else x


def rows_of(x: Features | np.ndarray) -> int:
    """How many images ``x`` holds."""
    return len(next(iter(as_features(x).values())))


def normalized(rows: np.ndarray, normalize: str) -> np.ndarray:
    """(N, d) ``rows`` normalised: ``none``, ``l2`` (unit length) or ``power`` (signed square
    root, then unit length)."""
    if normalize == "none":
        return rows
    if normalize == "power":
        rows = np.sign(rows) * np.sqrt(np.abs(rows))
    elif normalize != "l2":
        raise ValueError(f"unknown normalize {normalize!r}; expected none, l2 or power")
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), _EPSILON)


def part_rows(x: np.ndarray, part: str) -> np.ndarray:
    """One part as (N, d) float32 rows of its source ``x``: the (N, h, w, c) output tensor
    flattened or pooled (``flatten``, ``gap``, ``gmp``), or an (N, c) tap as it is."""
    x = np.asarray(x, dtype=np.float32)
    if part not in OUTPUT_PARTS:
        if x.ndim != 2:
            raise ValueError(f"expected (N, c) vectors for the tap {part}, got shape {x.shape}")
        return x
    if x.ndim != 4:
        raise ValueError(f"expected (N, h, w, c) feature tensors, got shape {x.shape}")
    if part == "flatten":
        return x.reshape(len(x), -1)
    return x.mean(axis=(1, 2)) if part == "gap" else x.max(axis=(1, 2))


class FeatureRows(TransformerMixin, BaseEstimator):
    """Cached features -> (N, d) rows: each of ``parts`` taken from its source, normalised by
    ``normalize``, the parts concatenated in the order given.

    ``parts``: a part or a list of parts (``flatten``: d = h*w*c, 8,192 for (4, 4, 512);
    ``gap``/``gmp``: d = c; a tap: d = its channels). Stateless: ``fit`` only checks the input.
    """

    def __init__(self, parts: str | list[str] | tuple[str, ...] = "flatten",
                 normalize: str = "none"):
        self.parts = parts
        self.normalize = normalize

    def __setstate__(self, state: dict) -> None:
        # heads saved while the class was FeatureView name the parts ``view``
        if "view" in state:
            state = {("parts" if key == "view" else key): value for key, value in state.items()}
        super().__setstate__(state)

    def fit(self, X, y=None):  # noqa: N803 (scikit-learn's names)
        """Check that ``X`` holds every source the parts read; nothing is learned."""
        self.n_features_in_ = self.transform(X[:1] if isinstance(X, np.ndarray) else
                                             {k: v[:1] for k, v in X.items()}).shape[1]
        return self

    def transform(self, X):  # noqa: N803
        """``{source: array}`` (or the bare output tensor) -> (N, d) float32."""
        x = as_features(X)
        # heads saved before normalisation existed have no ``normalize``
        normalize = getattr(self, "normalize", "none")
        parts = []
        for part in feature_parts(self.parts):
            source = source_of(part)
            if source not in x:
                raise ValueError(f"the features hold no {source} (they hold "
                                 f"{', '.join(x) or 'nothing'}) for the part {part}")
            parts.append(normalized(part_rows(x[source], part), normalize))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


# skops finds a class by its module and name: files saved while it was FeatureView ask for it.
FeatureView = FeatureRows
