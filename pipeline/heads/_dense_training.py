"""The dense head's training loop: shuffled epochs, early stopping between epochs.

The model trains on logits (from-logits loss and accuracy: the same gradients as
softmax/sigmoid-then-cross-entropy, computed faster and more stably); the caller puts the
probability output back afterwards. On the TensorFlow backend an epoch is one compiled call
with a fused RMSprop (:mod:`~pipeline.heads._dense_tf_steps`, about a quarter faster on the
source recipe); on JAX and PyTorch it is one call of Keras' ``fit`` with Keras' own RMSprop,
the same maths.
"""

from __future__ import annotations

import numpy as np

from ..config import DenseParams
from ..nn.optimizers import keras_optimizer
from ..nn.outputs import ClassifierOutput
from ..nn.runtime import BACKEND, keras
from .splits import VALIDATION_BATCH, LabelledSplit


def training_optimizer(params: DenseParams):
    """The optimizer of ``params`` for training: on TensorFlow, RMSprop is the fused
    :class:`~pipeline.heads._fused_rmsprop.FusedRMSprop` (not a Keras class a saved model may
    name, so only for training); elsewhere Keras' own."""
    if BACKEND == "tensorflow":
        from ._fused_rmsprop import fused_optimizer
        return fused_optimizer(params)
    return keras_optimizer(params.optimizer, params.learning_rate)


class KerasSteps:
    """Epochs and validation through Keras' ``fit`` and ``evaluate``, on any backend: the
    model is compiled with ``optimizer``, a from-logits loss and an accuracy on logits."""

    def __init__(self, model, optimizer, train: LabelledSplit, batch_size: int,
                 n_classes: int):
        self.binary = ClassifierOutput(n_classes).binary
        if self.binary:  # one logit: class 1 above 0, where the sigmoid is above 0.5
            loss = keras.losses.BinaryCrossentropy(from_logits=True)
            accuracy = keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)
        else:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        model.compile(optimizer=optimizer, loss=loss, metrics=[accuracy])
        self.model, self.train, self.batch_size = model, train, batch_size

    def _labels(self, y: np.ndarray) -> np.ndarray:
        return y.astype(np.float32)[:, None] if self.binary else y.astype(np.int32)

    def epoch(self, order: np.ndarray) -> tuple[float, float]:
        """One pass over the training rows in ``order``, in batches of ``batch_size``; the
        mean loss and accuracy."""
        x = keras.tree.map_structure(lambda rows: rows[order], self.train.x)
        history = self.model.fit(x, self._labels(self.train.y[order]),
                                 batch_size=self.batch_size, epochs=1, shuffle=False,
                                 verbose=0).history
        return history["loss"][-1], history["accuracy"][-1]

    def validate(self, split: LabelledSplit) -> tuple[float, float]:
        """Mean loss and accuracy on ``split``."""
        scores = self.model.evaluate(split.x, self._labels(split.y), batch_size=VALIDATION_BATCH,
                                     verbose=0, return_dict=True)
        return float(scores["loss"]), float(scores["accuracy"])


def _steps(model, optimizer, train: LabelledSplit, batch_size: int, n_classes: int):
    if BACKEND == "tensorflow":
        from ._dense_tf_steps import CompiledSteps
        return CompiledSteps(model, optimizer, train, batch_size, n_classes)
    return KerasSteps(model, optimizer, train, batch_size, n_classes)


def train_dense_head(model, optimizer, params: DenseParams, train: LabelledSplit,
                     validation: LabelledSplit, n_classes: int,
                     seed: int) -> dict[str, list[float]]:
    """Train ``model`` (it outputs logits) on ``train``; return its history per epoch.

    ``train.x`` / ``validation.x`` are the model's inputs (an (N, ...) float32 array, or a dict
    of them by input name) and ``.y`` (N,) class indices. The rows are reshuffled every epoch
    from ``seed``. With ``params.patience`` set and a non-empty validation split, training stops
    once validation accuracy has not risen for ``patience`` epochs, and with
    ``params.restore_best`` the model ends with the weights of its best epoch (the first of
    equals), whether or not it stopped early.

    Returns ``{"loss", "accuracy"[, "val_loss", "val_accuracy"]}``, one float per epoch run:
    Keras' ``History`` keys, so reports read both alike.
    """
    if not len(train):
        raise ValueError("the dense head needs at least one training row")
    steps = _steps(model, optimizer, train, params.batch_size, n_classes)
    shuffle = np.random.default_rng(seed)
    watch = params.patience is not None and len(validation) > 0
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    if len(validation):
        history.update(val_loss=[], val_accuracy=[])
    best_accuracy, best_weights, epochs_without_gain = -np.inf, None, 0
    for _ in range(params.epochs):
        loss, accuracy = steps.epoch(shuffle.permutation(len(train)).astype(np.int32))
        history["loss"].append(float(loss))
        history["accuracy"].append(float(accuracy))
        if not len(validation):
            continue
        val_loss, val_accuracy = steps.validate(validation)
        history["val_loss"].append(val_loss)
        history["val_accuracy"].append(val_accuracy)
        if not watch:
            continue
        if val_accuracy > best_accuracy:
            best_accuracy, epochs_without_gain = val_accuracy, 0
            if params.restore_best:
                best_weights = model.get_weights()
        else:
            epochs_without_gain += 1
            if epochs_without_gain >= params.patience:
                break
    if best_weights is not None:
        model.set_weights(best_weights)
    return history
