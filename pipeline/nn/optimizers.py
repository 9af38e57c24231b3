"""Keras optimizers by the names stages.yaml uses."""

from __future__ import annotations

from .runtime import keras

_OPTIMIZERS = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam,
               "nadam": keras.optimizers.Nadam, "sgd": keras.optimizers.SGD}


def keras_optimizer(name: str, learning_rate: float):
    """A new Keras optimizer by name (rmsprop, adam, nadam or sgd: config's ``OPTIMIZERS``)."""
    return _OPTIMIZERS[name](learning_rate=learning_rate)
