"""Keras building blocks the stages share, in one place each.

``backend`` (which Keras backend this process runs, without importing Keras), ``runtime``
(the one Keras and TensorFlow import), ``layers`` (the pipeline's registered Keras layers),
``loading`` (the one safe loader of saved models), ``inference`` (one compiled call for any
batch size, on any backend), ``outputs`` (the class-count -> last layer, loss and
probabilities rule, without TensorFlow), ``augment`` (augmentation settings -> Keras
preprocessing layers), ``optimizers``, ``callbacks`` (early stopping), ``layer_table``.
Importing this package imports nothing; each module imports Keras only if it needs it.
"""
