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

from collections.abc import Callable, Mapping

import numpy as np

from ..config import OUTPUT
from ..config.heads import NORMALIZATIONS, OUTPUT_PARTS, feature_parts
from ..optional_imports import DATAFRAME_LIBRARIES, modules_marked_absent

with modules_marked_absent(DATAFRAME_LIBRARIES):
    from sklearn.base import BaseEstimator, TransformerMixin

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


def rows_of(x: Features | np.ndarray | PreparedRows) -> int:
    """How many images ``x`` holds."""
    if isinstance(x, PreparedRows):
        return len(x)
    return len(next(iter(as_features(x).values())))


class PreparedRows:
    """Rows that :class:`FeatureRows` of ``parts`` and ``normalize`` has already made: (N, d)
    float32. A sweep makes them once per feature setting and passes them to every trial of
    that setting; the FeatureRows step of each trial's pipeline hands them on as they are."""

    __slots__ = ("rows", "parts", "normalize")

    def __init__(self, rows: np.ndarray, parts: tuple[str, ...], normalize: str):
        self.rows = rows
        self.parts = tuple(parts)
        self.normalize = normalize

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> PreparedRows:
        return PreparedRows(self.rows[index], self.parts, self.normalize)


def normalize_in_place(rows: np.ndarray, normalize: str) -> np.ndarray:
    """Normalise (N, d) float32 ``rows`` in place and return them: ``none``, ``l2`` (unit
    length) or ``power`` (signed square root, then unit length). ``rows`` may be a view of
    some columns of a larger array; no copy of the same size is made."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalize {normalize!r}; expected none, l2 or power")
    if normalize == "none":
        return rows
    if normalize == "power":
        negative = np.signbit(rows)
        np.sqrt(np.abs(rows, out=rows), out=rows)
        np.negative(rows, out=rows, where=negative)
    lengths = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    rows /= np.maximum(lengths, _EPSILON)[:, None]
    return rows


def part_width(part: str, shape: tuple[int, ...]) -> int:
    """Numbers per row of ``part`` when its source holds ``shape`` per image ((h, w, c) for
    the output tensor, (c,) for a tap)."""
    if part == "flatten":
        return int(np.prod(shape))
    return int(shape[-1])


#: Images per block while :func:`feature_rows` reads a source (memory, not maths): the raw
#: features of a block are all that is held besides the rows.
FEATURE_ROWS_BLOCK = 4096


def feature_rows(read: Callable[[str, slice], np.ndarray],
                 shapes: Mapping[str, tuple[int, ...]],
                 parts: str | list[str] | tuple[str, ...], normalize: str,
                 count: int) -> np.ndarray:
    """(count, d) float32 rows of ``parts``: each part taken from its source, normalised on
    its own by ``normalize``, the parts side by side in the order given.

    ``read(source, rows)`` gives the (n, ...) features of one source for the images ``rows``
    (a slice of ``range(count)``), ``shapes`` the shape of one image's features per source.
    Sources are read :data:`FEATURE_ROWS_BLOCK` images at a time, so only the rows and one
    block of raw features (an output tensor is h*w times its pooled part) are in memory."""
    parts = feature_parts(parts)
    widths = [part_width(part, shapes[source_of(part)]) for part in parts]
    rows = np.empty((count, sum(widths)), np.float32)
    start = 0
    for part, width in zip(parts, widths):
        for first in range(0, count, FEATURE_ROWS_BLOCK):
            images = slice(first, min(first + FEATURE_ROWS_BLOCK, count))
            block = rows[images, start:start + width]
            block[...] = part_rows(read(source_of(part), images), part)
            normalize_in_place(block, normalize)
        start += width
    return rows


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
        first = (X[:1] if isinstance(X, (np.ndarray, PreparedRows)) else
                 {k: v[:1] for k, v in X.items()})
        self.n_features_in_ = self.transform(first).shape[1]
        return self

    def transform(self, X):  # noqa: N803
        """``{source: array}`` (or the bare output tensor) -> (N, d) float32; rows this
        transform has already made (:class:`PreparedRows` of the same parts and
        normalisation) as they are."""
        # heads saved before normalisation existed have no ``normalize``
        normalize = getattr(self, "normalize", "none")
        parts = feature_parts(self.parts)
        if isinstance(X, PreparedRows):
            if (X.parts, X.normalize) != (tuple(parts), normalize):
                raise ValueError(f"rows prepared from {'+'.join(X.parts)} ({X.normalize}) "
                                 f"given to a head of {'+'.join(parts)} ({normalize})")
            return X.rows
        x = as_features(X)
        for part in parts:
            if source_of(part) not in x:
                raise ValueError(f"the features hold no {source_of(part)} (they hold "
                                 f"{', '.join(x) or 'nothing'}) for the part {part}")
        if len(parts) == 1 and normalize == "none":  # the part as it is: a view, no copy
            return part_rows(x[source_of(parts[0])], parts[0])
        shapes = {source: array.shape[1:] for source, array in x.items()}
        return feature_rows(lambda source, images: x[source][images], shapes, parts,
                            normalize, rows_of(x))


# skops finds a class by its module and name: files saved while it was FeatureView ask for it.
FeatureView = FeatureRows
