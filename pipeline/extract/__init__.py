"""The extract stage: the frozen backbone, once per image, into the feature cache.

- :mod:`~pipeline.extract.stage`: the stage's declaration; :mod:`~pipeline.extract.run`:
  :func:`~pipeline.extract.run.run_extract` (scan, what the cache lacks, the loop, the
  dataset view);
- :mod:`~pipeline.extract.loop`: decoded batches -> backbone -> rows, shared by the local run
  and every cluster partition (``Inference``, ``FAULT_POINTS``);
- :mod:`~pipeline.extract.cluster`: extraction on a dask scheduler, a shard per partition;
- :mod:`~pipeline.extract.augmented`: cached augmented copies of the training images.
"""
