"""Head folders: a trained head saved with its metadata, and loaded without running code.

A head folder holds ``head.json`` (format, name, kind, classes, backbone fingerprint, feature
shape, parameters, how it was selected) and the model file its kind writes: ``model.skops``
(scikit-learn heads; skops, no pickle, and only allowlisted types load) or ``model.keras``
(the dense head; loaded in Keras' safe mode, which refuses serialized Python code).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cache.files import write_atomic

from ..config import OUTPUT
from ..errors import HeadLoadError, ModelLoadError
from .kind import FittedHead
from .registry import head_kind

HEAD_FORMAT = 1


def save_head(head: FittedHead, folder: Path, metadata: dict[str, Any]) -> Path:
    """Write ``head`` and ``metadata`` (JSON-able) into ``folder``; returns the model file."""
    folder.mkdir(parents=True, exist_ok=True)
    model_file = head.save(folder)
    payload = {"format": HEAD_FORMAT, "kind": head.kind.name, "n_classes": head.n_classes,
               "model_file": model_file.name, **metadata}
    write_atomic(folder / "head.json", json.dumps(payload, indent=2) + "\n")
    return model_file


def read_head_metadata(folder: Path) -> dict[str, Any]:
    """The ``head.json`` of ``folder`` (:class:`HeadLoadError` when there is none)."""
    try:
        metadata = json.loads((folder / "head.json").read_text(encoding="utf-8"))
        missing = {"kind", "model_file", "n_classes"} - set(metadata)
    except (OSError, ValueError, TypeError) as exc:
        raise HeadLoadError(f"{folder}: not a saved head ({exc})") from None
    if missing:
        raise HeadLoadError(f"{folder}: not a saved head (head.json has no "
                            f"{', '.join(sorted(missing))})")
    if metadata.get("format") != HEAD_FORMAT:
        raise HeadLoadError(f"{folder}: head format {metadata.get('format')!r}; this version "
                            f"reads format {HEAD_FORMAT}")
    if Path(metadata["model_file"]).name != metadata["model_file"]:
        raise HeadLoadError(f"{folder}: model_file must name a file inside the head folder")
    return metadata


def head_sources(metadata: dict[str, Any]) -> dict[str, str]:
    """The fingerprint of each source a saved head reads (heads saved before taps existed
    read the output tensor of ``fingerprint``)."""
    return metadata.get("sources") or {OUTPUT: metadata["fingerprint"]}


def load_head(folder: Path) -> tuple[FittedHead, dict[str, Any]]:
    """A head saved by :func:`save_head`, and its metadata; executes nothing from the files."""
    metadata = read_head_metadata(folder)
    kind = head_kind(metadata["kind"])
    try:
        model = kind.load(folder / metadata["model_file"])
    except ModelLoadError as exc:
        raise HeadLoadError(str(exc)) from None
    return FittedHead(kind, model, int(metadata["n_classes"])), metadata
