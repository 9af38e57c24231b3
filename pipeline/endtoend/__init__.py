"""The end-to-end stages: models that train through the convnet, on the dataset view's images.

- :mod:`~pipeline.endtoend.stages`: the declarations of both stages;
- :mod:`~pipeline.endtoend.finetune`: augmentation through the frozen VGG16 base with a dense
  head (warm-started from the heads stage), then block5 opened;
- :mod:`~pipeline.endtoend.scratch`: the reference recipe's small CNN from nothing, a baseline;
- :mod:`~pipeline.endtoend.training`: what they share (image batches through the batch reader,
  a training phase with checkpoints and logs, scoring and saving).
"""
