"""Images -> batches: decode and resize in worker threads while the backbone computes.

A small thread pool decodes whole batches ahead of the consumer (Pillow releases the GIL while
it decodes and resizes), and at most ``prefetch`` batches wait in memory, so the next batch is
ready when inference asks for it and memory stays bounded. A file that fails to decode becomes
a zero image with ``ok = False`` and its reason is kept; the batch keeps its size.

It is the one decode path of the pipeline: extraction (here and on cluster workers), cached
augmented views, the end-to-end stages' batches and prediction all read images through it.

Why not tf.data: with ``numpy_function`` decoders it was measured to stall for about 20 s at
the end of some 1,000-image runs (the final ``next`` on an exhausted iterator), and its AUTOTUNE
thread pool competed with inference on 2 CPU cores. Plain threads have neither problem, and
this module needs no TensorFlow.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ImageDecodeError
from .decode import DecodeOptions, decode_file


@dataclass
class DecodedBatch:
    """One batch: positions into the item list, pixels and which rows decoded."""

    positions: np.ndarray   # (B,) int64, index into the items given to BatchReader
    pixels: np.ndarray      # (B, h, w, 3) float32, RGB 0..255 (zeros where not ok)
    ok: np.ndarray          # (B,) bool


@dataclass
class BatchReader:
    """Iterate :class:`DecodedBatch` es over ``paths`` in order; ``failures``: position -> reason,
    ``transient``: the positions whose failure may not happen again (see ImageDecodeError).

    ``sha256[i]`` is the content hash ``paths[i]`` had when scanned; a file whose bytes changed
    since is refused rather than cached under the wrong hash (None: no such check).
    """

    paths: Sequence[Path]
    sha256: Sequence[str | None]
    options: DecodeOptions
    batch_size: int = 32
    workers: int = 2     # decoding threads, each decoding one whole batch at a time
    prefetch: int = 2    # decoded batches allowed to wait for the consumer
    failures: dict[int, str] = field(default_factory=dict)
    transient: set[int] = field(default_factory=set)  # failures worth retrying next run

    def _decode_one(self, i: int) -> np.ndarray | None:
        try:
            return decode_file(self.paths[i], self.options, self.sha256[i])
        except ImageDecodeError as exc:
            self.failures[i] = str(exc)
            if not exc.permanent:
                self.transient.add(i)
        except Exception as exc:  # a decoder bug must cost one image, not the run
            self.failures[i] = f"decoder error: {type(exc).__name__}: {exc}"
            self.transient.add(i)
        return None

    def _decode_batch(self, start: int) -> DecodedBatch:
        positions = np.arange(start, min(start + self.batch_size, len(self.paths)))
        pixels = np.zeros((len(positions), *self.options.size, 3), dtype=np.float32)
        ok = np.zeros(len(positions), dtype=bool)
        for row, i in enumerate(positions):
            image = self._decode_one(int(i))
            if image is not None:
                pixels[row] = image
                ok[row] = True
        return DecodedBatch(positions=positions, pixels=pixels, ok=ok)

    def __len__(self) -> int:
        """Number of batches."""
        return -(-len(self.paths) // self.batch_size)

    def __iter__(self) -> Iterator[DecodedBatch]:
        starts = iter(range(0, len(self.paths), self.batch_size))
        ahead = max(1, self.workers) + max(0, self.prefetch)
        pool = ThreadPoolExecutor(max_workers=max(1, self.workers),
                                  thread_name_prefix="decode")
        pending: deque[Future] = deque()
        try:
            for start in starts:
                pending.append(pool.submit(self._decode_batch, start))
                if len(pending) >= ahead:
                    break
            while pending:
                batch = pending.popleft().result()
                next_start = next(starts, None)
                if next_start is not None:
                    pending.append(pool.submit(self._decode_batch, next_start))
                yield batch
        finally:
            # On Ctrl-C or an error downstream, do not decode batches nobody will read.
            pool.shutdown(wait=True, cancel_futures=True)
