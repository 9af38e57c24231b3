"""The view of the cached (N, h, w, c) features that a head reads: flat rows for scikit-learn.

Every scikit-learn head starts with :class:`FeatureView`; the dense head applies the same views
as its first Keras layer. Nothing here decodes an image or runs a convnet.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

#: The module path older releases saved FeatureView under (skops files name it), read by
#: :mod:`pipeline.heads.saving` as this class.
FORMER_PATH = "pipeline.features.FeatureView"


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
