"""The scratch stage: the reference recipe's CNN trained from nothing, as a baseline.

``pixels -> [augmentation] -> rescale 1/255 -> (conv 3x3 relu + max-pool) x len(filters) ->
flatten -> dense relu -> dense softmax``, on the dataset view's train/validation/test splits,
so its accuracy sits beside the cached-feature heads and the fine-tuned model on the same
images. Outputs in ``<run>/scratch/``: best checkpoint, history, TensorBoard logs (TensorFlow
backend), the final ``model.keras``, evaluation.json and confusion matrices.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .. import metric_keys as keys
from ..config import ScratchConfig
from ..context import RunContext
from ..evaluate import SplitScores
from ..heads.leaderboard import format_score
from ..nn.augment import build_augmentation
from ..nn.optimizers import keras_optimizer
from ..nn.outputs import ClassifierOutput
from ..nn.runtime import keras, seed_random
from .training import PhaseResult, score_and_save, split_batches, train_phase, trainable_view


@dataclass
class ScratchResult:
    """What one scratch run did."""

    phase: PhaseResult
    scores: dict[str, SplitScores]
    parameters: int
    seconds: float
    folder: Path

    def metrics(self) -> dict[str, float | int]:
        """Flat ``scratch.*`` metrics for metrics.json."""
        return {keys.SCRATCH_VAL_ACCURACY: self.scores["validation"].accuracy,
                keys.SCRATCH_TEST_ACCURACY: self.scores["test"].accuracy,
                keys.SCRATCH_PARAMETERS: self.parameters,
                keys.SCRATCH_SECONDS: round(self.seconds, 3),
                **self.phase.metrics("scratch")}

    def summary(self) -> str:
        """One line for training, one for the scores."""
        return (f"scratch: {self.parameters:,} parameters, {self.phase.epochs} epochs in "
                f"{self.phase.seconds:.1f} s ({self.phase.seconds_per_image:.3f} s/image/epoch)\n"
                f"  validation accuracy {self.scores['validation'].accuracy:.4f}, test "
                f"accuracy {format_score(self.scores['test'].accuracy)} "
                f"({self.scores['test'].images} test images); saved in {self.folder}")


def build_scratch_model(params: ScratchConfig, input_shape: tuple[int, int, int],
                        n_classes: int) -> keras.Model:
    """Raw RGB pixels (N, h, w, 3) 0..255 -> class probabilities (the last layer of
    :class:`~pipeline.nn.outputs.ClassifierOutput`: softmax, or one sigmoid unit for two
    classes)."""
    seed_random(params.seed)
    pixels = keras.Input(shape=input_shape, name="rgb_pixels")
    x = pixels
    augmentation = build_augmentation(params.augmentation, params.seed)
    if augmentation is not None:
        x = augmentation(x)
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(x)
    for block, filters in enumerate(params.filters, start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu",
                                name=f"conv{block}")(x)
        x = keras.layers.MaxPooling2D(name=f"pool{block}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(params.units, activation="relu", name="hidden")(x)
    output = ClassifierOutput(n_classes)
    outputs = keras.layers.Dense(output.units, activation=output.activation, name="classes")(x)
    return keras.Model(pixels, outputs, name="scratch")


def run_scratch(ctx: RunContext, output: Path, progress: bool = True) -> ScratchResult:
    """Train the from-scratch CNN on the dataset view's images; save and score it.

    Needs ``pipeline run extract`` first (for the view). Results go to ``output/scratch``.
    """
    started = time.perf_counter()
    params = ctx.config.stages.scratch
    view = trainable_view(ctx)
    folder = output / "scratch"
    folder.mkdir(parents=True, exist_ok=True)
    batches = split_batches(ctx, view, params.batch_size, params.seed)
    model = build_scratch_model(params, ctx.spec.input_shape, len(view.classes))
    model.compile(optimizer=keras_optimizer(params.optimizer, params.learning_rate),
                  loss=ClassifierOutput(len(view.classes)).loss, metrics=["accuracy"])
    phase = train_phase(model, "train", batches["train"], batches["validation"], params.epochs,
                        folder, params.patience, params.restore_best,
                        verbose=2 if progress else 0)
    scores = score_and_save(model, {"validation": batches["validation"],
                                    "test": batches["test"]}, view.classes, folder, "scratch")
    return ScratchResult(phase, scores, model.count_params(), time.perf_counter() - started,
                         folder)
