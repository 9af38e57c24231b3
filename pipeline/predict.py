"""``pipeline predict``: top-k classes for image files, from a trained head or an end-to-end model.

With a head (``runs/<run>/heads/<name>``) an image whose content is already cached for the
head's backbone fingerprint is classified from its cached features: no decoding, no convnet,
not even a TensorFlow import for a scikit-learn head, and the backbone's weights are never
looked for. Only the other images are decoded (by the extraction's batch reader) and sent
through the backbone, which must be the one of stages.yaml, with the head's fingerprint. With
an end-to-end model (``runs/<run>/finetune`` or ``.../scratch``) every image is decoded and
classified by the model. Nothing is written to the cache.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cache import FeatureStore
from cache.files import sha256_file

from . import metric_keys as keys
from .config import OUTPUT
from .context import RunContext
from .data.batches import BatchReader
from .data.decode import DecodeOptions
from .data.names import display_path
from .data.scan import IMAGE_EXTENSIONS
from .errors import PipelineError
from .heads.saving import head_sources, load_head
from .json_values import json_text
from .nn.outputs import class_probabilities
from .runs import list_runs


@dataclass
class Prediction:
    """Top-k classes of one file, where its features came from, or why it failed."""

    path: str
    top: list[tuple[str, float | None]] = field(default_factory=list)  # (class, probability)
    source: str = ""        # cache | backbone | model
    error: str | None = None

    def to_json(self) -> dict:
        """Plain data for JSON output."""
        return {"path": self.path, "source": self.source, "error": self.error,
                "predictions": [{"class": c, "probability": p} for c, p in self.top]}


def image_files(paths: list[Path]) -> list[Path]:
    """The files among ``paths``, and the image files under the folders among them, sorted."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                            and not p.name.startswith("."))
        elif path.exists():
            found.append(path)
        else:
            raise PipelineError(f"{path}: no such file or folder")
    return found


def newest_best_head(runs_dir: Path) -> Path:
    """The best head of the newest run that trained heads (from its metrics.json)."""
    for run in reversed(list_runs(runs_dir)):
        name = run.metrics.get(keys.HEADS_BEST_NAME)
        if name and (runs_dir / run.name / "heads" / str(name) / "head.json").is_file():
            return runs_dir / run.name / "heads" / str(name)
    raise PipelineError(f"no trained head under {runs_dir}: run `pipeline run heads`, or name "
                        f"one with --head (a runs/<run>/heads/<name> folder) or --model")


def _top(proba: np.ndarray | None, predicted: int, classes: list[str],
         k: int) -> list[tuple[str, float | None]]:
    if proba is None:  # a model without probabilities (linear SVM): its class only
        return [(classes[predicted], None)]
    order = np.argsort(-proba, kind="stable")[:k]
    return [(classes[i], float(proba[i])) for i in order]


def _decoded_batches(files: list[Path], indices: list[int], options: DecodeOptions,
                     results: list[Prediction], batch_size: int, workers: int
                     ) -> Iterator[tuple[list[int], np.ndarray]]:
    """``(indices, (B, h, w, 3) float32 pixels)`` for the files at ``indices`` that decode, a
    batch at a time (memory stays bounded); failures are written into ``results``."""
    reader = BatchReader(paths=[files[i] for i in indices], sha256=[None] * len(indices),
                         options=options, batch_size=batch_size, workers=workers)
    for batch in reader:
        for position in batch.positions[~batch.ok]:
            results[indices[position]].error = reader.failures[int(position)]
        if batch.ok.any():
            yield [indices[p] for p in batch.positions[batch.ok]], batch.pixels[batch.ok]


def predict_with_head(ctx: RunContext, head_folder: Path, files: list[Path],
                      top_k: int = 3) -> list[Prediction]:
    """Classify ``files`` with the saved head in ``head_folder`` (cached features first)."""
    head, metadata = load_head(head_folder)
    classes, sources = metadata["classes"], head_sources(metadata)
    config = ctx.config
    stores = {source: FeatureStore(config.cache.dir, fingerprint)
              for source, fingerprint in sources.items()}
    results = [Prediction(str(path)) for path in files]
    shas: dict[int, str] = {}
    for i, path in enumerate(files):
        try:
            shas[i] = sha256_file(path)
        except OSError as exc:
            results[i].error = f"unreadable: {exc.strerror or type(exc).__name__}"
    missing = set().union(*(store.missing(shas.values()) for store in stores.values()))
    batches: list[tuple[list[int], dict[str, np.ndarray]]] = []
    hits = [i for i, sha in shas.items() if sha not in missing]
    if hits:
        batches.append((hits, {source: store.get([shas[i] for i in hits])
                               for source, store in stores.items()}))
        for i in hits:
            results[i].source = "cache"
    misses = [i for i, sha in shas.items() if sha in missing]
    if misses:
        _check_backbone_computes(ctx, sources, len(misses))
        from .extract.loop import Inference
        infer = Inference(ctx.spec, tuple(sources))
        params = config.stages.extract
        for done, pixels in _decoded_batches(files, misses, ctx.spec.decode, results,
                                             params.batch_size, params.decode_workers):
            batches.append((done, infer(pixels)))
            for i in done:
                results[i].source = "backbone"
    for indices, x in batches:
        proba, predicted = head.predict_proba(x), head.predict(x)
        for j, i in enumerate(indices):
            results[i].top = _top(None if proba is None else proba[j], int(predicted[j]),
                                  classes, top_k)
    return results


def _check_backbone_computes(ctx: RunContext, sources: dict[str, str], misses: int) -> None:
    """:class:`PipelineError` unless the backbone of stages.yaml computes every source the head
    reads with the fingerprint the head was trained on."""
    computed = {source: ctx.fingerprint.id if source == OUTPUT else
                ctx.spec.tap_fingerprint(source).id for source in sources}
    if computed != sources:
        raise PipelineError(
            f"{misses} image(s) are not cached for the head's backbone "
            f"{sources.get(OUTPUT) or ', '.join(sources.values())}, and stages.yaml describes "
            f"another backbone, so their features cannot be computed; use the stages.yaml the "
            f"head was trained with")


def predict_with_model(ctx: RunContext, model_folder: Path, files: list[Path],
                       top_k: int = 3) -> list[Prediction]:
    """Classify ``files`` with the end-to-end model saved in ``model_folder`` (finetune or
    scratch), decoding each image as extraction does at the model's input size."""
    try:
        info = json.loads((model_folder / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{model_folder}: not a saved end-to-end model ({exc})") from None
    from .backbone import decode_options
    from .nn.inference import compiled_inference
    from .nn.loading import load_keras_model

    model = load_keras_model(model_folder / "model.keras")
    infer = compiled_inference(model)
    decode = decode_options(ctx.config)
    options = DecodeOptions(size=tuple(model.input_shape[1:3]),
                            interpolation=decode.interpolation,
                            exif_transpose=decode.exif_transpose, max_pixels=decode.max_pixels)
    results = [Prediction(str(path), source="model") for path in files]
    params = ctx.config.stages.extract
    for done, pixels in _decoded_batches(files, list(range(len(files))), options, results,
                                         params.batch_size, params.decode_workers):
        proba = class_probabilities(np.asarray(infer(pixels)))
        for j, i in enumerate(done):
            results[i].top = _top(proba[j], int(proba[j].argmax()), info["classes"], top_k)
    return results


def format_predictions(results: list[Prediction], as_json: bool = False) -> str:
    """A table (one line per file: top classes with probabilities, and the source) or JSON."""
    if as_json:
        return json_text([r.to_json() for r in results])
    lines = []
    shown = [display_path(r.path) for r in results]
    width = max(map(len, shown), default=0)
    for r, path in zip(results, shown):
        if r.error:
            lines.append(f"{path:<{width}}  error: {r.error}")
            continue
        top = "  ".join(f"{display_path(c)} {'-' if p is None else f'{p:.3f}'}"
                        for c, p in r.top)
        lines.append(f"{path:<{width}}  {top}  ({r.source})")
    return "\n".join(lines)
