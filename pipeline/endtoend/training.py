"""What the end-to-end stages (finetune, scratch) share: images of a split as Keras batches,
training with checkpoints and logs, and scoring on a split.

Both stages read the dataset view that extract wrote, so every recipe trains, selects and
tests on exactly the images (and skipped files) the cached heads saw. Images are decoded by the
extraction's batch reader and options, ahead of the model, one batch in memory at a time
beyond the few decoded ahead, so memory does not grow with the data set.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cache.files import write_atomic

from .. import metric_keys as keys
from ..context import RunContext
from ..data.batches import BatchReader, DecodedBatch
from ..data.decode import DecodeOptions
from ..data.names import display_path
from ..data.view import DatasetView
from ..errors import NoTestImagesWarning, PipelineError, SkippedImageWarning
from ..evaluate import SplitScores, evaluate, plot_confusion_matrix, write_evaluation
from ..nn.callbacks import early_stopping
from ..nn.inference import compiled_inference
from ..nn.loading import save_keras_model
from ..nn.outputs import class_probabilities
from ..nn.runtime import BACKEND, keras, quiet_tensorflow_import


@dataclass(frozen=True)
class ImageSplit:
    """The image files of one split: absolute ``paths`` and ``labels`` (N,) int64 classes."""

    name: str
    paths: tuple[Path, ...]
    labels: np.ndarray
    sha256: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)


def trainable_view(ctx: RunContext) -> DatasetView:
    """The dataset view extract wrote, checked to hold two classes and non-empty train and
    validation splits (:class:`~pipeline.errors.MissingViewError` when extract has not run)."""
    view = ctx.require_view()
    view.check_trainable("end-to-end models train on train and keep their best epoch by "
                         "validation")
    return view


def image_split(view: DatasetView, split: str) -> ImageSplit:
    """The files of ``split`` in the view's order, with their class indices."""
    images = view.select(split)
    root = Path(view.root)
    return ImageSplit(split, tuple(root / path for path in images.path),
                      images.label.astype(np.int64), tuple(images.keys()))


class ImageBatches(keras.utils.PyDataset):
    """Batches ``(pixels (B, h, w, 3) float32 RGB 0..255, labels (B,) int64)`` of a split.

    With ``shuffle`` the rows are put in a new order each epoch, drawn from ``seed``. Batches
    asked for in order (as ``fit(shuffle=False)`` and scoring do) come from one
    :class:`~pipeline.data.batches.BatchReader`, which decodes the next ones in worker threads
    while the model computes; any other index starts a new reader there. A file that no longer
    decodes (changed or removed since extraction) is left out of its batch with a
    :class:`SkippedImageWarning`, never the run.
    """

    def __init__(self, split: ImageSplit, options: DecodeOptions, batch_size: int,
                 shuffle: bool = False, seed: int = 0, decode_workers: int = 2):
        super().__init__(workers=1, use_multiprocessing=False)
        if not len(split):
            raise PipelineError(f"the {split.name} split has no image")
        self.split, self.options, self.batch_size = split, options, batch_size
        self.shuffle, self.decode_workers = shuffle, decode_workers
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(len(split)) if shuffle else np.arange(len(split))
        self.warned: set[int] = set()
        self._reader: BatchReader | None = None
        self._batches: Iterator[DecodedBatch] | None = None
        self._start = 0          # the first row of the epoch order the reader reads
        self._next_index = -1    # the batch index the reader yields next

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def _read_from(self, index: int) -> None:
        self._close()
        self._start = index * self.batch_size
        rows = self._order[self._start:]
        self._reader = BatchReader(paths=[self.split.paths[r] for r in rows],
                                   sha256=[self.split.sha256[r] for r in rows],
                                   options=self.options, batch_size=self.batch_size,
                                   workers=self.decode_workers)
        self._batches = iter(self._reader)
        self._next_index = index

    def _close(self) -> None:
        if self._batches is not None:
            self._batches.close()  # stops its decoding threads
        self._batches, self._next_index = None, -1

    def __getitem__(self, index: int):
        if index != self._next_index:
            self._read_from(index)
        batch = next(self._batches)
        self._next_index += 1
        rows = self._order[self._start + batch.positions]
        for position, row in zip(batch.positions[~batch.ok], rows[~batch.ok]):
            if int(row) not in self.warned:
                self.warned.add(int(row))
                reason = self._reader.failures.get(int(position), "could not be decoded")
                warnings.warn(f"skipped {display_path(str(self.split.paths[row]))}: {reason}",
                              SkippedImageWarning, stacklevel=2)
        if not batch.ok.any():
            raise PipelineError(f"no image of batch {index} of the {self.split.name} split "
                                f"decodes any more; run `pipeline run extract` again")
        return batch.pixels[batch.ok], self.split.labels[rows[batch.ok]]

    def on_epoch_end(self) -> None:
        """A new order for the next epoch (shuffled batches only)."""
        self._close()
        if self.shuffle:
            self._order = self._rng.permutation(len(self.split))


def split_batches(ctx: RunContext, view: DatasetView, batch_size: int,
                  seed: int) -> dict[str, ImageBatches | None]:
    """Shuffled training batches; validation and test batches in view order (test is None,
    with a :class:`NoTestImagesWarning`, when the test split is empty)."""
    decode, workers = ctx.spec.decode, ctx.config.stages.extract.decode_workers
    test = image_split(view, "test")
    if not len(test):
        warnings.warn("the test split has no images: the model is trained and selected on "
                      "validation but not tested", NoTestImagesWarning, stacklevel=3)
    return {"train": ImageBatches(image_split(view, "train"), decode, batch_size, True, seed,
                                  workers),
            "validation": ImageBatches(image_split(view, "validation"), decode, batch_size,
                                       decode_workers=workers),
            "test": ImageBatches(test, decode, batch_size, decode_workers=workers)
            if len(test) else None}


@dataclass
class PhaseResult:
    """One call of :func:`train_phase`: its history, epochs run and wall seconds."""

    name: str
    history: dict[str, list[float]]
    seconds: float
    images: int          # training images per epoch

    @property
    def epochs(self) -> int:
        """Epochs actually run (early stopping may end before the configured number)."""
        return len(self.history.get("loss", []))

    @property
    def best_val_accuracy(self) -> float:
        """The best validation accuracy of any epoch (NaN with no epoch)."""
        values = self.history.get("val_accuracy", [])
        return max(values) if values else math.nan

    @property
    def seconds_per_image(self) -> float:
        """Wall seconds per training image per epoch, validation passes included."""
        return self.seconds / (self.epochs * self.images) if self.epochs else math.nan

    def metrics(self, stage: str) -> dict[str, float | int]:
        """Flat ``<stage>.<phase>.*`` metrics (a phase of 0 epochs has no rates or accuracy:
        JSON has no NaN, so they are left out)."""
        values = dict(zip((keys.phase_key(stage, self.name, m) for m in keys.PHASE_MEASURES),
                          (self.epochs, round(self.seconds, 3), round(self.seconds_per_image, 5),
                           self.best_val_accuracy)))
        return {k: v for k, v in values.items() if not math.isnan(v)}


def train_phase(model, name: str, train: ImageBatches, validation: ImageBatches, epochs: int,
                folder: Path, patience: int | None, restore_best: bool,
                verbose: int = 0) -> PhaseResult:
    """Fit the compiled ``model`` for up to ``epochs``; return its history.

    Writes into ``folder``: ``best_<name>.keras`` (the best epoch by validation accuracy),
    ``history_<name>.csv`` and ``.json``, and (TensorFlow backend) TensorBoard logs under
    ``logs/<name>``. With ``patience``, stops once validation accuracy has not risen for that
    many epochs and, with ``restore_best``, ends with the best epoch's weights.
    """
    folder.mkdir(parents=True, exist_ok=True)
    quiet_tensorflow_import()  # the checkpoints are saved, and Keras saves through TensorFlow
    callbacks = [
        keras.callbacks.ModelCheckpoint(folder / f"best_{name}.keras", monitor="val_accuracy",
                                        mode="max", save_best_only=True),
        keras.callbacks.CSVLogger(str(folder / f"history_{name}.csv")),
    ]
    if BACKEND == "tensorflow":
        # Keras' TensorBoard callback writes through TensorFlow on every backend; on JAX or
        # PyTorch it would import TensorFlow, which may take the GPU's memory for itself
        callbacks.append(keras.callbacks.TensorBoard(
            log_dir=str(folder / "logs" / name), histogram_freq=0, write_graph=False))
    callbacks += early_stopping(patience, restore_best)
    started = time.perf_counter()
    history: dict[str, list[float]] = {}
    if epochs > 0:
        try:
            # shuffle=False: the training batches shuffle their own rows every epoch, and
            # reading them in order lets the batch reader decode ahead of the model
            fitted = model.fit(train, validation_data=validation, epochs=epochs,
                               callbacks=callbacks, verbose=verbose, shuffle=False)
        except _wrapped_errors() as exc:
            # An error inside the batches (a file gone since extraction) reaches here wrapped
            # by TensorFlow; the user needs its message, not the wrapper's traceback.
            message = " ".join((exc.message or str(exc)).split())[:300]
            raise PipelineError(f"{name} stopped: {message}") from None
        history = {k: [float(v) for v in values] for k, values in fitted.history.items()}
    result = PhaseResult(name, history, time.perf_counter() - started, len(train.split))
    write_atomic(folder / f"history_{name}.json", json.dumps(history, indent=2) + "\n")
    return result


def _wrapped_errors() -> tuple[type[BaseException], ...]:
    # TensorFlow runs the batches inside its own graph and rewraps what they raise; JAX and
    # PyTorch call them from Python, so their errors arrive as raised
    if BACKEND == "tensorflow":
        from ..nn.runtime import tf
        return (tf.errors.OpError,)
    return ()


def predict_split(model, batches: ImageBatches) -> tuple[np.ndarray, np.ndarray]:
    """(N, n_classes) probabilities and (N,) true labels of an unshuffled pass over a split."""
    infer = compiled_inference(model)  # one trace for every batch size, the last one included
    rows, labels = [], []
    for index in range(len(batches)):
        pixels, y = batches[index]
        rows.append(np.asarray(infer(pixels)))
        labels.append(y)
    return class_probabilities(np.concatenate(rows)), np.concatenate(labels)


def score_and_save(model, splits: dict[str, ImageBatches | None], classes: list[str],
                   folder: Path, title: str) -> dict[str, SplitScores]:
    """Scores of ``model`` on each split (evaluation.json, a confusion PNG per split) and the
    model itself as ``model.keras``. A split given as None (empty) scores NaN, no figure."""
    scores = {}
    for split, batches in splits.items():
        if batches is None:
            scores[split] = evaluate(np.empty(0, np.int64), np.empty(0, np.int64), None, classes)
            continue
        proba, y = predict_split(model, batches)
        scores[split] = evaluate(y, proba.argmax(axis=1), proba, classes)
        plot_confusion_matrix(scores[split], folder / f"confusion_{split}.png",
                              f"{title} on {split}")
    write_evaluation(scores, folder / "evaluation.json")
    save_keras_model(model, folder / "model.keras")
    # what `pipeline predict --model` needs besides the model: the class names, in order
    write_atomic(folder / "model.json", json.dumps({
        "kind": title, "classes": classes, "model_file": "model.keras",
        "input_shape": list(model.input_shape[1:])}, indent=2) + "\n")
    return scores
