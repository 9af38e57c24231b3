"""The one rule from a number of classes to a classifier's last layer, loss and probabilities.

Two classes: one sigmoid unit (the probability of class 1) and binary cross-entropy; more: one
softmax unit per class and sparse categorical cross-entropy. Every model the pipeline builds
(dense heads, the end-to-end models) ends this way, and :func:`class_probabilities` turns any
of their outputs back into one probability per class. No TensorFlow here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClassifierOutput:
    """The last layer and loss of a classifier of ``n_classes`` (at least 2) classes."""

    n_classes: int

    @property
    def binary(self) -> bool:
        """Two classes: a single sigmoid unit."""
        return self.n_classes == 2

    @property
    def units(self) -> int:
        """Units of the last layer: 1 for two classes, else one per class."""
        return 1 if self.binary else self.n_classes

    @property
    def activation(self) -> str:
        """``sigmoid`` for two classes, else ``softmax``."""
        return "sigmoid" if self.binary else "softmax"

    @property
    def loss(self) -> str:
        """The Keras loss matching the activation, for integer class labels."""
        return "binary_crossentropy" if self.binary else "sparse_categorical_crossentropy"


def class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """A classifier's outputs (N, units) -> (N, n_classes) float64 probabilities: one sigmoid
    column p becomes (1 - p, p); softmax columns stay as they are."""
    outputs = np.asarray(outputs, np.float64)
    return np.hstack([1 - outputs, outputs]) if outputs.shape[1] == 1 else outputs
