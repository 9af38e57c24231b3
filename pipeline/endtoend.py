"""What the end-to-end stages (finetune, scratch) share: images of a split as Keras batches,
training with checkpoints and logs, and scoring on a split.

Both stages read the dataset view that extract wrote, so every recipe trains, selects and
tests on exactly the images (and skipped files) the cached heads saw. Images are decoded with
the extraction's own decoder and options (:mod:`pipeline.images`), one batch at a time, so
memory does not grow with the data set.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cache import FeatureStore

from ._tf import keras, tf
from .config import PipelineConfig
from .errors import NoTestImagesWarning, PipelineError, SkippedImageWarning
from .evaluation import evaluate, plot_confusion_matrix, write_evaluation
from .features import check_trainable, find_view
from .fingerprint import BackboneSpec, backbone_fingerprint, backbone_spec
from .images import DecodeOptions, ImageDecodeError, decode_file
from .views import DatasetView, view_path


@dataclass(frozen=True)
class ImageSplit:
    """The image files of one split: absolute ``paths`` and ``labels`` (N,) int64 classes."""

    name: str
    paths: tuple[Path, ...]
    labels: np.ndarray
    sha256: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)


def dataset_view(config: PipelineConfig) -> tuple[BackboneSpec, str, DatasetView]:
    """The backbone spec, its fingerprint and the dataset view extract wrote for ``config``
    (:class:`MissingViewError` when extract has not run)."""
    spec = backbone_spec(config)
    fingerprint, _ = backbone_fingerprint(spec)
    store = FeatureStore(config.cache.dir, fingerprint)
    view = find_view(store, view_path(config, store))
    check_trainable(view, "end-to-end models train on train and keep their best epoch by "
                          "validation")
    return spec, fingerprint, view


def image_split(view: DatasetView, split: str) -> ImageSplit:
    """The files of ``split`` in the view's order, with their class indices."""
    images = view.select(split)
    root = Path(view.root)
    return ImageSplit(split, tuple(root / image.path for image in images),
                      np.array([view.label_index(i.label) for i in images], np.int64),
                      tuple(i.sha256 for i in images))


class ImageBatches(keras.utils.PyDataset):
    """Batches ``(pixels (B, h, w, 3) float32 RGB 0..255, labels (B,) int64)`` of a split.

    With ``shuffle`` the order is drawn anew each epoch from ``seed``. A file that no longer
    decodes (changed or removed since extraction) is left out of its batch with a
    :class:`SkippedImageWarning`, never the run.
    """

    def __init__(self, split: ImageSplit, options: DecodeOptions, batch_size: int,
                 shuffle: bool = False, seed: int = 0):
        super().__init__(workers=1, use_multiprocessing=False)
        if not len(split):
            raise PipelineError(f"the {split.name} split has no image")
        self.split, self.options, self.batch_size = split, options, batch_size
        self.shuffle = shuffle
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(len(split)) if shuffle else np.arange(len(split))
        self.warned: set[int] = set()

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def __getitem__(self, index: int):
        rows = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        pixels, labels = [], []
        for row in rows:
            try:
                image = decode_file(self.split.paths[row], self.options,
                                    self.split.sha256[row])
            except ImageDecodeError as exc:
                if row not in self.warned:
                    self.warned.add(int(row))
                    warnings.warn(f"skipped {self.split.paths[row]}: {exc}",
                                  SkippedImageWarning, stacklevel=2)
                continue
            pixels.append(image)
            labels.append(self.split.labels[row])
        if not pixels:
            raise PipelineError(f"no image of batch {index} of the {self.split.name} split "
                                f"decodes any more; run `pipeline run extract` again")
        return np.stack(pixels).astype(np.float32), np.array(labels, np.int64)

    def on_epoch_end(self) -> None:
        """A new order for the next epoch (shuffled batches only)."""
        if self.shuffle:
            self._order = self._rng.permutation(len(self.split))



def split_batches(view: DatasetView, decode: DecodeOptions, batch_size: int,
                  seed: int) -> dict[str, ImageBatches]:
    """Shuffled training batches; validation and test batches in view order (test is None,
    with a :class:`NoTestImagesWarning`, when the test split is empty)."""
    test = image_split(view, "test")
    if not len(test):
        warnings.warn("the test split has no images: the model is trained and selected on "
                      "validation but not tested", NoTestImagesWarning, stacklevel=3)
    return {"train": ImageBatches(image_split(view, "train"), decode, batch_size, True, seed),
            "validation": ImageBatches(image_split(view, "validation"), decode, batch_size),
            "test": ImageBatches(test, decode, batch_size) if len(test) else None}


def loss_for(n_classes: int, binary_output: bool) -> str:
    """The cross-entropy matching the model's output: one sigmoid unit or a softmax."""
    return "binary_crossentropy" if binary_output and n_classes == 2 else \
        "sparse_categorical_crossentropy"


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

    def metrics(self, prefix: str) -> dict[str, float | int]:
        """Flat ``prefix.*`` metrics (a phase of 0 epochs has no rates or accuracy: JSON has
        no NaN, so they are left out)."""
        values = {f"{prefix}.epochs": self.epochs, f"{prefix}.seconds": round(self.seconds, 3),
                  f"{prefix}.seconds_per_image": round(self.seconds_per_image, 5),
                  f"{prefix}.best_val_accuracy": self.best_val_accuracy}
        return {k: v for k, v in values.items() if not math.isnan(v)}


def train_phase(model, name: str, train: ImageBatches, validation: ImageBatches, epochs: int,
                folder: Path, patience: int | None, restore_best: bool,
                verbose: int = 0) -> PhaseResult:
    """Fit the compiled ``model`` for up to ``epochs``; return its history.

    Writes into ``folder``: ``best_<name>.keras`` (the best epoch by validation accuracy),
    ``history_<name>.csv`` and ``.json``, and TensorBoard logs under ``logs/<name>``. With
    ``patience``, stops once validation accuracy has not risen for that many epochs and, with
    ``restore_best``, ends with the best epoch's weights.
    """
    folder.mkdir(parents=True, exist_ok=True)
    callbacks = [
        keras.callbacks.ModelCheckpoint(folder / f"best_{name}.keras", monitor="val_accuracy",
                                        mode="max", save_best_only=True),
        keras.callbacks.CSVLogger(str(folder / f"history_{name}.csv")),
        keras.callbacks.TensorBoard(log_dir=str(folder / "logs" / name), histogram_freq=0,
                                    write_graph=False),
    ]
    if patience is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=patience,
            restore_best_weights=restore_best))
    started = time.perf_counter()
    history: dict[str, list[float]] = {}
    if epochs > 0:
        try:
            fitted = model.fit(train, validation_data=validation, epochs=epochs,
                               callbacks=callbacks, verbose=verbose)
        except tf.errors.OpError as exc:
            # An error inside the batches (a file gone since extraction) reaches here wrapped
            # by TensorFlow; the user needs its message, not the wrapper's traceback.
            message = " ".join((exc.message or str(exc)).split())[:300]
            raise PipelineError(f"{name} stopped: {message}") from None
        history = {k: [float(v) for v in values] for k, values in fitted.history.items()}
    result = PhaseResult(name, history, time.perf_counter() - started, len(train.split))
    (folder / f"history_{name}.json").write_text(json.dumps(history, indent=2) + "\n",
                                                 encoding="utf-8")
    return result


def predict_split(model, batches: ImageBatches) -> tuple[np.ndarray, np.ndarray]:
    """(N, n_classes) probabilities and (N,) true labels of an unshuffled pass over a split."""
    from .backbone import compiled_inference

    infer = compiled_inference(model)  # one trace for every batch size, the last one included
    rows, labels = [], []
    for index in range(len(batches)):
        pixels, y = batches[index]
        rows.append(np.asarray(infer(pixels), np.float64))
        labels.append(y)
    proba = np.concatenate(rows)
    if proba.shape[1] == 1:  # one sigmoid unit: probability of class 1
        proba = np.hstack([1 - proba, proba])
    return proba, np.concatenate(labels)


def score_and_save(model, splits: dict[str, ImageBatches | None], classes: list[str],
                   folder: Path, title: str) -> dict[str, dict]:
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
    model.save(folder / "model.keras")
    # what `pipeline predict --model` needs besides the model: the class names, in order
    (folder / "model.json").write_text(json.dumps({
        "kind": title, "classes": classes, "model_file": "model.keras",
        "input_shape": list(model.input_shape[1:])}, indent=2) + "\n", encoding="utf-8")
    return scores
