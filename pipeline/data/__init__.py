"""Images in, labelled batches out, without TensorFlow: the data side of the pipeline.

- :mod:`~pipeline.data.scan`: the data folder -> image files, their sha256, their split,
  duplicate and leakage groups;
- :mod:`~pipeline.data.decode`: one file -> a resized (h, w, 3) uint8 RGB array, as Keras'
  ``load_img`` does, or an :class:`~pipeline.errors.ImageDecodeError` with the reason;
- :mod:`~pipeline.data.batches`: files -> decoded batches, in worker threads with bounded
  prefetch: the one decode path of every stage;
- :mod:`~pipeline.data.view`: the dataset view (which cached images, with class and split,
  make up an experiment) and its CSV copies;
- :mod:`~pipeline.data.names`: file and class names shown on one printable line.
"""
