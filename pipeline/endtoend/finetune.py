"""The finetune stage: augmentation through the frozen VGG16 base, then block5 fine-tuned.

The model is ``pixels -> augmentation -> VGG16 preprocessing -> VGG16 base -> dense head``,
built from the same :class:`BackboneSpec` and preprocessing layer as extraction, so the base
inside it computes for an unaugmented image exactly the features the cache holds. The head
starts from the dense head the heads stage trained on the cache when there is one (the source
material's advice: train the top first, then open the base), else from a new dense head.

Phase 1 trains the head through augmentation with the base frozen. Phase 2 opens the layers
``unfreeze`` names (block5_conv1..3 by default), recompiles with a lower learning rate and
trains on. Before each phase the layer table with trainable and frozen counts is written.
Outputs in ``<run>/finetune/``: layer tables, best checkpoint and history per phase,
TensorBoard logs (TensorFlow backend), the final ``model.keras``, evaluation.json and
confusion matrices.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cache.files import write_atomic

from .. import metric_keys as keys
from ..backbone.model import build_vgg16_base
from ..config import OUTPUT, DenseParams, FinetuneConfig
from ..context import RunContext
from ..errors import HeadLoadError, PipelineError, WarmStartError
from ..evaluate import SplitScores
from ..heads.dense import dense_model
from ..heads.leaderboard import format_score
from ..heads.registry import head_kind
from ..heads.saving import head_sources, load_head, read_head_metadata
from ..nn.augment import build_augmentation
from ..nn.layer_table import format_layer_table, layer_table
from ..nn.layers import VGG16Preprocess
from ..nn.optimizers import keras_optimizer
from ..nn.outputs import ClassifierOutput
from ..nn.runtime import keras, seed_random
from .training import PhaseResult, score_and_save, split_batches, train_phase, trainable_view


@dataclass
class FinetuneResult:
    """What one finetune run did."""

    warm_start: Path | None
    phases: list[PhaseResult]
    scores: dict[str, SplitScores]
    base_trainable: dict[str, tuple[int, int]]   # phase -> (trainable, all) base parameters
    seconds: float
    folder: Path

    def metrics(self) -> dict[str, float | int | str]:
        """Flat ``finetune.*`` metrics for metrics.json."""
        out: dict[str, float | int | str] = {
            keys.FINETUNE_VAL_ACCURACY: self.scores["validation"].accuracy,
            keys.FINETUNE_TEST_ACCURACY: self.scores["test"].accuracy,
            keys.FINETUNE_SECONDS: round(self.seconds, 3),
            keys.FINETUNE_WARM_START: str(self.warm_start or "")}
        for phase in self.phases:
            out.update(phase.metrics("finetune"))
            trainable, total = self.base_trainable[phase.name]
            out[keys.base_trainable_params(phase.name)] = trainable
        return out

    def summary(self) -> str:
        """One line per phase and the final scores (the layer tables are in files)."""
        lines = []
        start = f"the dense head in {self.warm_start}" if self.warm_start else "a new dense head"
        lines.append(f"finetune: started from {start}")
        for phase in self.phases:
            trainable, total = self.base_trainable[phase.name]
            if not phase.epochs:
                lines.append(f"  {phase.name}: skipped (0 epochs)")
                continue
            lines.append(f"  {phase.name}: {phase.epochs} epochs in {phase.seconds:.1f} s "
                         f"({phase.seconds_per_image:.3f} s/image/epoch), best validation "
                         f"accuracy {phase.best_val_accuracy:.4f}; base {trainable:,} trainable "
                         f"of {total:,} parameters")
        lines.append(f"  final model: validation accuracy "
                     f"{self.scores['validation'].accuracy:.4f}, test accuracy "
                     f"{format_score(self.scores['test'].accuracy)} "
                     f"({self.scores['test'].images} test images); saved in {self.folder}")
        return "\n".join(lines)


def find_warm_start(params: FinetuneConfig, runs_dir: Path, fingerprint: str,
                    classes: list[str], view_key: str,
                    flip_average: bool = False) -> Path | None:
    """The head folder phase 1 starts from, or None for a new head.

    A head fits when it is a dense head trained on this backbone's features of this dataset
    view (same data and split settings: a head trained on another split may have seen this
    split's validation or test images) for the same classes, and it loads.
    ``head_from: auto``: of the fitting heads under ``runs_dir``, the newest run's, and within
    a run the best ranked. A path: that head, which must fit (:class:`WarmStartError`).

    With ``flip_average`` (``backbone.flip_average``) no head fits: it learned the mean of
    each image's features and its mirror's, and the model through the base computes one pass.
    """
    if params.head_from is None:
        return None
    if flip_average:
        if params.head_from != "auto":
            raise WarmStartError(f"finetune.head_from {params.head_from}: {_FLIP_AVERAGED}")
        return None
    if params.head_from != "auto":
        problem = _unfit(params.head_from, fingerprint, classes, view_key)
        if problem:
            raise WarmStartError(f"finetune.head_from {params.head_from}: {problem}")
        return params.head_from
    candidates = []
    for head_json in runs_dir.glob("*/heads/*/head.json"):
        try:
            metadata = json.loads(head_json.read_text(encoding="utf-8"))
            rank = (metadata.get("selected_by") or {}).get("rank")
            rank = float(rank) if rank is not None else math.inf
        except (OSError, ValueError, TypeError, AttributeError):
            continue
        candidates.append((head_json.parent.parent.parent.name, -rank, head_json.parent))
    for _, _, folder in sorted(candidates, reverse=True):
        if _unfit(folder, fingerprint, classes, view_key) is None:
            return folder
    return None


_FLIP_AVERAGED = ("heads of this cache learned flip-averaged features (backbone.flip_average), "
                  "which the model through the base does not compute; finetune starts from a "
                  "new head (head_from: auto or null)")


def _unfit(folder: Path, fingerprint: str, classes: list[str], view_key: str) -> str | None:
    """Why the head in ``folder`` cannot start this model, or None when it can."""
    try:
        metadata = read_head_metadata(folder)
        kind = head_kind(metadata["kind"])
    except HeadLoadError as exc:
        return f"unreadable head ({exc})"
    if not kind.sits_on_base:
        return f"a {kind.name} head; only a dense head can sit on the base"
    sources = list(head_sources(metadata)) if "sources" in metadata else [OUTPUT]
    if sources != [OUTPUT]:
        return (f"a head on taps ({', '.join(s for s in sources if s != OUTPUT)}); only a "
                f"dense head on the output tensor alone can sit on the base")
    if metadata.get("fingerprint") != fingerprint:
        return (f"trained on features of backbone {metadata.get('fingerprint')}, not "
                f"{fingerprint}")
    if metadata.get("dataset_view") != view_key:
        return (f"trained on another dataset view ({metadata.get('dataset_view')}, not "
                f"{view_key}: other data or split settings)")
    if metadata.get("classes") != classes:
        return f"trained for classes {metadata.get('classes')}, not {classes}"
    try:
        load_head(folder)
    except (HeadLoadError, OSError, ValueError) as exc:
        return f"does not load: {' '.join(str(exc).split())[:200]}"
    return None


def build_finetune_model(ctx: RunContext, n_classes: int,
                         warm_start: Path | None) -> keras.Model:
    """Raw RGB pixels (N, h, w, 3) 0..255 -> class probabilities, base frozen.

    Layers: ``augmentation`` (when any transform is on; identity at inference),
    ``vgg16_preprocess``, the base (named ``vgg16``), ``base_features`` (identity), the head
    (the warm-start head, or a new dense head of ``units`` and ``dropout``).
    """
    params = ctx.config.stages.finetune
    spec = ctx.spec
    seed_random(params.seed)
    base = build_vgg16_base(spec)
    if warm_start is not None:
        head = load_head(warm_start)[0].model
    else:
        # the reference recipe's head on the raw output: there are no cached training rows
        # here to take standardising statistics from
        head = dense_model(DenseParams(units=params.units, dropout=params.dropout), "flatten",
                           "none", {OUTPUT: spec.output_shape}, n_classes, params.seed,
                           scale=False, name="dense_head_finetune")
    if tuple(head.input_shape[1:]) != tuple(base.output_shape[1:]):
        raise WarmStartError(f"the head takes {head.input_shape[1:]}, the base gives "
                             f"{base.output_shape[1:]}")
    pixels = keras.Input(shape=spec.input_shape, name="rgb_pixels")
    x = pixels
    augmentation = build_augmentation(params.augmentation, params.seed)
    if augmentation is not None:
        x = augmentation(x)
    x = VGG16Preprocess(name="vgg16_preprocess")(x)
    # A named tap on the base's output: the features the cache holds, reachable from outside
    features = keras.layers.Identity(name="base_features")(base(x))
    return keras.Model(pixels, head(features), name="finetune")


def phase_optimizer(name: str, learning_rate: float, precision: str):
    """A phase's optimizer; under a float16 base, wrapped in Keras' loss scaling: float16's
    five exponent bits let small gradients through the opened blocks round to zero, which
    scaling the loss up (and the gradients back down) avoids. bfloat16 has float32's range and
    needs none."""
    optimizer = keras_optimizer(name, learning_rate)
    if precision == "float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def open_layers(base: keras.Model, names: list[str]) -> None:
    """Make exactly the base layers in ``names`` trainable (the rest stay frozen)."""
    present = {layer.name for layer in base.layers}
    missing = [n for n in names if n not in present]
    if missing:
        raise PipelineError(f"finetune.unfreeze: the base has no layer {', '.join(missing)} "
                            f"(it ends at {base.layers[-1].name})")
    base.trainable = True
    for layer in base.layers:
        layer.trainable = layer.name in names


def base_of(model: keras.Model) -> keras.Model:
    """The VGG16 base inside a model from :func:`build_finetune_model`."""
    return next(layer for layer in model.layers
                if isinstance(layer, keras.Model) and layer.name.startswith("vgg16"))


def base_parameter_counts(base: keras.Model) -> tuple[int, int]:
    """(trainable, all) parameters of the base, as Keras counts them."""
    trainable = sum(int(np.prod(w.shape)) for w in base.trainable_weights)
    return trainable, base.count_params()


def run_finetune(ctx: RunContext, output: Path, progress: bool = True) -> FinetuneResult:
    """Train the end-to-end model in two phases on the dataset view's images; save and score.

    Needs ``pipeline run extract`` first (for the view: the same images and splits as the
    heads); the stage's check (:func:`~pipeline.endtoend.stages.check_finetune`) has passed.
    ``output`` is the run folder; results go to ``output/finetune``.
    """
    started = time.perf_counter()
    config = ctx.config
    params = config.stages.finetune
    view = trainable_view(ctx)
    warm_start = find_warm_start(params, config.runs.dir, ctx.fingerprint.id, view.classes,
                                 ctx.view_id, ctx.spec.flip_average)
    folder = output / "finetune"
    folder.mkdir(parents=True, exist_ok=True)

    batches = split_batches(ctx, view, params.batch_size, params.seed)
    model = build_finetune_model(ctx, len(view.classes), warm_start)
    base = base_of(model)
    loss = ClassifierOutput(len(view.classes)).loss
    verbose = 2 if progress else 0

    phases, counts = [], {}
    for name, epochs, optimizer, rate in (
            ("phase1", params.frozen_epochs, params.frozen_optimizer,
             params.frozen_learning_rate),
            ("phase2", params.finetune_epochs, params.finetune_optimizer,
             params.finetune_learning_rate)):
        if name == "phase2":
            open_layers(base, params.unfrozen_layers())
        # Keras takes trainable changes into account only at compile time
        model.compile(optimizer=phase_optimizer(optimizer, rate, ctx.spec.precision),
                      loss=loss, metrics=["accuracy"])
        table = format_layer_table(layer_table(model))
        write_atomic(folder / f"layers_{name}.txt", table + "\n")
        if progress:  # shown before the phase starts, as the reference recipe does
            print(f"finetune {name}: layers before training\n{table}", flush=True)
        counts[name] = base_parameter_counts(base)
        phases.append(train_phase(model, name, batches["train"], batches["validation"],
                                  epochs, folder, params.patience, params.restore_best,
                                  verbose=verbose))

    scores = score_and_save(model, {"validation": batches["validation"],
                                    "test": batches["test"]}, view.classes, folder, "finetune")
    return FinetuneResult(warm_start, phases, scores, counts, time.perf_counter() - started,
                          folder)
