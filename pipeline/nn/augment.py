"""Augmentation: the reference recipe's random transforms as Keras preprocessing layers.

One definition serves both routes. Inside an end-to-end model the layers draw new transforms
every step (training only; at inference they pass images through unchanged). For cached
augmented copies, :func:`augment_image` applies the same layers to one image with a seed
derived from the image's content and its copy number, so a copy is the same every time it is
computed, whatever else is in the batch.

Images are RGB float32 in 0..255, before VGG16's preprocessing, so fill_value 0 is black.
"""

from __future__ import annotations

import numpy as np

from ..config import AugmentConfig
from .layers import RandomHorizontalShear
from .runtime import keras


def build_augmentation(params: AugmentConfig, seed: int = 0) -> keras.Sequential | None:
    """The enabled transforms as a ``keras.Sequential`` named ``augmentation``, or None.

    Order: flip, rotation, shift, shear, zoom (as ImageDataGenerator composes them).
    """
    fill = {"fill_mode": params.fill_mode, "fill_value": params.fill_value}
    layers = []
    if params.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed, name="flip"))
    if params.rotation > 0:
        layers.append(keras.layers.RandomRotation(params.rotation / 360.0, seed=seed + 1,
                                                  name="rotation", **fill))
    if params.width_shift > 0 or params.height_shift > 0:
        layers.append(keras.layers.RandomTranslation(params.height_shift, params.width_shift,
                                                     seed=seed + 2, name="shift", **fill))
    if params.shear > 0:
        layers.append(RandomHorizontalShear(params.shear, seed=seed + 3, name="shear", **fill))
    if params.zoom > 0:
        layers.append(keras.layers.RandomZoom(params.zoom, seed=seed + 4, name="zoom", **fill))
    if not layers:
        return None
    return keras.Sequential(layers, name="augmentation")


def augment_image(augmentation: keras.Sequential, image: np.ndarray, seed: int) -> np.ndarray:
    """``image`` (h, w, 3) float32 transformed by every layer of ``augmentation``, each with a
    seed derived from ``seed``: the same seed gives the same pixels."""
    batch = keras.ops.convert_to_tensor(image[None].astype(np.float32))
    for position, layer in enumerate(augmentation.layers):
        # A generator, not the int: Keras reuses an int seed for every draw inside a layer,
        # which would tie a copy's horizontal shift to its vertical one and fix the shear's
        # sign; a generator seeded by the int advances between draws, deterministically.
        generator = keras.random.SeedGenerator((seed + 7919 * position) % 2**31)
        transform = layer.get_random_transformation(batch, training=True, seed=generator)
        batch = layer.transform_images(batch, transform, training=True)
    return keras.ops.convert_to_numpy(batch)[0]


def copy_seed(key: str) -> int:
    """The random seed of the augmented copy whose cache key is ``key`` (31 bits)."""
    return int(key[:8], 16) % 2**31
