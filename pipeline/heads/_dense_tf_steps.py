"""The dense head's epochs as TensorFlow functions: one compiled call per epoch.

The source recipe is 3,000 steps of 20 rows (2,000 rows, 30 epochs). Each step is small, so
what surrounds it costs as much as the step: Keras' ``fit`` adds its data adapter, a metric
update per step, callbacks and a validation pass through ``evaluate``. Here a whole epoch is one
``tf.function`` over the shuffled row order (a ``tf.while_loop`` of steps on tensors that stay
in TensorFlow), and validation is one more call. Measured on the flowers features, 2,000 rows
x 30 epochs: 12.2-13.5 s with this loop, 16.6-18.9 s with ``fit`` (docs/benchmarks.md). Used on
the TensorFlow backend; :class:`~pipeline.heads._dense_training.KerasSteps` does the same
through ``fit`` on the others.
"""

from __future__ import annotations

import numpy as np

from ..nn.outputs import ClassifierOutput
from ..nn.runtime import keras, tf
from .splits import VALIDATION_BATCH, LabelledSplit


def logits_loss_and_accuracy(n_classes: int):
    """``(loss(y, logits), correct(y, logits))`` for a head with 1 logit (two classes) or
    ``n_classes`` logits (:class:`~pipeline.nn.outputs.ClassifierOutput`): the mean
    cross-entropy, and a float 0/1 per row for a right answer.

    ``y`` is (N,) int32 class indices. One logit means class 1 when it is above 0, which is the
    sigmoid's probability above 0.5.
    """
    if ClassifierOutput(n_classes).binary:
        cross_entropy = keras.losses.BinaryCrossentropy(from_logits=True)

        def loss(y, logits):
            return cross_entropy(tf.cast(y, logits.dtype)[:, None], logits)

        def correct(y, logits):
            return tf.cast(tf.equal(tf.cast(logits[:, 0] > 0, tf.int32), y), tf.float32)
    else:
        cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        def loss(y, logits):
            return cross_entropy(y, logits)

        def correct(y, logits):
            return tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32)
    return loss, correct


class CompiledSteps:
    """The traced epoch and validation functions for one model, optimizer and training split."""

    def __init__(self, model, optimizer, train: LabelledSplit, batch_size: int,
                 n_classes: int):
        self.model = model
        self.optimizer = optimizer
        self.variables = model.trainable_variables
        optimizer.build(self.variables)
        self.loss, self.correct = logits_loss_and_accuracy(n_classes)
        # the model's inputs: one array, or a dict of them by input name
        self.x = tf.nest.map_structure(lambda rows: tf.constant(rows, tf.float32), train.x)
        self.y = tf.constant(train.y, tf.int32)
        self.batch_size = batch_size
        # No XLA: with it the source recipe (30 epochs) had not finished after 10 minutes,
        # against 12-15 s without
        self.epoch = tf.function(self._epoch, jit_compile=False,
                                 input_signature=[tf.TensorSpec([None], tf.int32)])
        self.score = tf.function(self._score, input_signature=[
            tf.nest.map_structure(lambda rows: tf.TensorSpec([None, *rows.shape[1:]],
                                                             tf.float32), train.x),
            tf.TensorSpec([None], tf.int32)])

    def _epoch(self, order):
        """One pass over the rows in ``order`` (a permutation of the training rows), in batches
        of ``batch_size`` (the last one shorter); returns the mean loss and accuracy."""
        size = tf.shape(order)[0]
        loss_sum = tf.constant(0.0)
        correct_sum = tf.constant(0.0)
        for start in tf.range(0, size, self.batch_size):
            rows = order[start:start + self.batch_size]
            x = tf.nest.map_structure(lambda inputs, rows=rows: tf.gather(inputs, rows), self.x)
            y = tf.gather(self.y, rows)
            with tf.GradientTape() as tape:
                logits = self.model(x, training=True)
                loss = self.loss(y, logits)
            self.optimizer.apply(tape.gradient(loss, self.variables), self.variables)
            loss_sum += loss * tf.cast(tf.shape(rows)[0], tf.float32)
            correct_sum += tf.reduce_sum(self.correct(y, logits))
        count = tf.cast(size, tf.float32)
        return loss_sum / count, correct_sum / count

    def _score(self, x, y):
        """Summed loss and number of right answers on one batch, in inference mode."""
        logits = self.model(x, training=False)
        return self.loss(y, logits) * tf.cast(tf.shape(y)[0], tf.float32), \
            tf.reduce_sum(self.correct(y, logits))

    def validate(self, split: LabelledSplit) -> tuple[float, float]:
        """Mean loss and accuracy on ``split``."""
        loss_sum = correct_sum = 0.0
        for start in range(0, len(split), VALIDATION_BATCH):
            stop = start + VALIDATION_BATCH
            x = tf.nest.map_structure(
                lambda rows, a=start, b=stop: rows[a:b].astype(np.float32, copy=False), split.x)
            loss, correct = self.score(x, split.y[start:stop].astype(np.int32))
            loss_sum += float(loss)
            correct_sum += float(correct)
        return loss_sum / len(split), correct_sum / len(split)
