"""Keras building blocks the stages share, in one place each.

``runtime`` (the one TensorFlow import), ``layers`` (the pipeline's registered Keras layers),
``loading`` (the one safe loader of saved models), ``inference`` (one traced call for any batch
size), ``outputs`` (the class-count -> last layer, loss and probabilities rule, without
TensorFlow), ``augment`` (augmentation settings -> Keras preprocessing layers), ``optimizers``,
``layer_table``. Importing this package imports nothing; each module imports TensorFlow only if
it needs it.
"""
