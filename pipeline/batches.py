"""Images -> batches: parallel decode and resize with tf.data, overlapped with inference.

Decoding runs in tf.data's thread pool (Pillow releases the GIL while it decodes and resizes)
and batches are prefetched, so the next batch is ready while the backbone computes this one.
A file that fails to decode becomes a zero image with ``ok = False`` and its reason is kept;
the batch keeps its full size so the model never retraces for an odd shape.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._tf import tf
from .images import DecodeOptions, ImageDecodeError, decode_file


@dataclass
class DecodedBatch:
    """One batch: positions into the item list, pixels and which rows decoded."""

    positions: np.ndarray   # (B,) int64, index into the items given to BatchReader
    pixels: np.ndarray      # (B, h, w, 3) float32, RGB 0..255 (zeros where not ok)
    ok: np.ndarray          # (B,) bool


@dataclass
class BatchReader:
    """Iterate :class:`DecodedBatch` es over ``paths``; ``failures`` maps position -> reason.

    ``sha256[i]`` is the content hash ``paths[i]`` had when scanned; a file whose bytes changed
    since is refused rather than cached under the wrong hash.
    """

    paths: Sequence[Path]
    sha256: Sequence[str]
    options: DecodeOptions
    batch_size: int = 32
    workers: int = 2  # parallel decoders; 0: let tf.data AUTOTUNE choose
    failures: dict[int, str] = field(default_factory=dict)

    def _decode(self, position) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        i = int(position)
        try:
            pixels = decode_file(self.paths[i], self.options, self.sha256[i])
            return np.int64(i), pixels, np.bool_(True)
        except ImageDecodeError as exc:
            self.failures[i] = str(exc)
        except Exception as exc:  # a decoder bug must cost one image, not the run
            self.failures[i] = f"decoder error: {type(exc).__name__}: {exc}"
        return np.int64(i), np.zeros((*self.options.size, 3), np.uint8), np.bool_(False)

    def __iter__(self) -> Iterator[DecodedBatch]:
        height, width = self.options.size

        def decode(position):
            i, pixels, ok = tf.numpy_function(self._decode, [position],
                                              (tf.int64, tf.uint8, tf.bool), stateful=False)
            pixels.set_shape((height, width, 3))
            i.set_shape(())
            ok.set_shape(())
            return i, pixels, ok

        parallel = self.workers or tf.data.AUTOTUNE
        dataset = (tf.data.Dataset.range(len(self.paths))
                   .map(decode, num_parallel_calls=parallel, deterministic=True)
                   .batch(self.batch_size)
                   .prefetch(2))
        for positions, pixels, ok in dataset.as_numpy_iterator():
            yield DecodedBatch(positions=positions, pixels=pixels.astype(np.float32), ok=ok)
