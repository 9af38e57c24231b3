"""Saving and loading trained heads without running code from the files.

A head folder holds ``head.json`` (format, name, kind, classes, backbone fingerprint, feature
shape, parameters, how it was selected) and the model: ``model.skops`` for scikit-learn heads
(skops, no pickle) or ``model.keras`` for the dense head (Keras' format, loaded in safe mode,
which refuses serialized Python code). skops refuses any type outside a short allowlist of
the types our own heads contain, so a tampered file cannot name an arbitrary class to
instantiate.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .errors import PipelineError
from .head_models import FittedHead

HEAD_FORMAT = 1
# Types skops does not trust by default that our heads legitimately contain.
TRUSTED_SKOPS_TYPES = (
    "pipeline.features.FeatureView",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
)
_DISTANCE_METRIC = re.compile(r"^sklearn\.metrics\._dist_metrics\.[A-Za-z]+Distance(64|32)$")


class ModelLoadError(PipelineError):
    """A saved model is missing, damaged, or asks to run code or build types not trusted."""


class HeadLoadError(ModelLoadError):
    """A head folder is missing, damaged, or names types that are not trusted."""


def load_keras_model(path: Path):
    """A ``.keras`` file loaded uncompiled in Keras' safe mode, which refuses serialized Python
    code (``Lambda`` layers, custom functions); raises :class:`ModelLoadError` with the reason
    whatever went wrong, as the file may be damaged or hostile."""
    from ._tf import keras
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 (a damaged or hostile archive raises many kinds)
        raise ModelLoadError(f"{path}: cannot load: {' '.join(str(exc).split())[:500]}") \
            from None


def save_head(head: FittedHead, folder: Path, metadata: dict[str, Any]) -> Path:
    """Write ``head`` and ``metadata`` (JSON-able) into ``folder``; returns the model file."""
    folder.mkdir(parents=True, exist_ok=True)
    if head.kind == "dense":
        model_file = folder / "model.keras"
        head.model.save(model_file)
    else:
        import skops.io
        model_file = folder / "model.skops"
        skops.io.dump(head.model, model_file)
    payload = {"format": HEAD_FORMAT, "kind": head.kind, "n_classes": head.n_classes,
               "model_file": model_file.name, **metadata}
    (folder / "head.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return model_file


def load_head(folder: Path) -> tuple[FittedHead, dict[str, Any]]:
    """A head saved by :func:`save_head`, and its metadata; executes nothing from the files."""
    try:
        metadata = json.loads((folder / "head.json").read_text(encoding="utf-8"))
        kind, model_file = metadata["kind"], folder / metadata["model_file"]
    except (OSError, ValueError, KeyError) as exc:
        raise HeadLoadError(f"{folder}: not a saved head ({exc})") from None
    if metadata.get("format") != HEAD_FORMAT:
        raise HeadLoadError(f"{folder}: head format {metadata.get('format')!r}; this version "
                            f"reads format {HEAD_FORMAT}")
    if Path(metadata["model_file"]).name != metadata["model_file"]:
        raise HeadLoadError(f"{folder}: model_file must name a file inside the head folder")
    if kind == "dense":
        # uncompiled: prediction needs no optimizer, and its saved state is not kept
        try:
            model = load_keras_model(model_file)
        except ModelLoadError as exc:
            raise HeadLoadError(str(exc)) from None
    else:
        model = _load_skops(model_file)
    return FittedHead(kind, model, int(metadata["n_classes"])), metadata


def _load_skops(model_file: Path):
    import skops.io

    try:
        untrusted = skops.io.get_untrusted_types(file=model_file)
    except Exception as exc:  # noqa: BLE001 (a damaged zip raises many kinds)
        raise HeadLoadError(f"{model_file}: cannot read: {exc}") from None
    refused = [t for t in untrusted
               if t not in TRUSTED_SKOPS_TYPES and not _DISTANCE_METRIC.match(t)]
    if refused:
        raise HeadLoadError(f"{model_file}: refusing to load types no head of this pipeline "
                            f"contains: {', '.join(refused)}")
    return skops.io.load(model_file, trusted=untrusted)
