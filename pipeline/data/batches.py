"""Images -> batches: decode and resize in worker threads while the backbone computes.

A pool of ``workers`` threads decodes the images of the next batches, a few images per task,
into each batch's own array (Pillow releases the GIL while it decodes and resizes, numpy while
it converts), so decoding scales with the threads whatever the batch size: one batch of 512
keeps 16 threads busy as well as 16 batches would. At most ``prefetch`` batches beyond the one
being consumed are decoded ahead, so memory stays bounded. A file that fails to decode becomes
a zero image with ``ok = False`` and its reason is kept; the batch keeps its size.

It is the one decode path of the pipeline: extraction (here and on cluster workers), cached
augmented copies, the end-to-end stages' batches and prediction all read images through it.

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

# Images one decoding task takes at most: a 150x150 photo decodes in about 3 ms, a task's
# overhead is some 20 us, and a batch should still spread over every thread
_IMAGES_PER_TASK = 8


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
    workers: int = 2     # decoding threads
    prefetch: int = 2    # batches decoded ahead of the one the consumer holds
    failures: dict[int, str] = field(default_factory=dict)
    transient: set[int] = field(default_factory=set)  # failures worth retrying next run

    def _decode_into(self, pixels: np.ndarray, ok: np.ndarray, rows: range,
                     positions: np.ndarray) -> None:
        # Each task owns its rows of the batch's arrays: threads never write the same element
        for row in rows:
            i = int(positions[row])
            try:
                pixels[row] = decode_file(self.paths[i], self.options, self.sha256[i])
                ok[row] = True
            except ImageDecodeError as exc:
                self.failures[i] = str(exc)
                if not exc.permanent:
                    self.transient.add(i)
            except Exception as exc:  # a decoder bug must cost one image, not the run
                self.failures[i] = f"decoder error: {type(exc).__name__}: {exc}"
                self.transient.add(i)

    def _submit_batch(self, pool: ThreadPoolExecutor, start: int
                      ) -> tuple[DecodedBatch, list[Future]]:
        positions = np.arange(start, min(start + self.batch_size, len(self.paths)))
        batch = DecodedBatch(positions=positions,
                             pixels=np.zeros((len(positions), *self.options.size, 3), np.float32),
                             ok=np.zeros(len(positions), dtype=bool))
        # a few images per task: enough tasks for every thread, few enough that submitting
        # them costs nothing next to decoding
        step = max(1, min(_IMAGES_PER_TASK, -(-len(positions) // max(1, self.workers))))
        tasks = [pool.submit(self._decode_into, batch.pixels, batch.ok,
                             range(first, min(first + step, len(positions))), positions)
                 for first in range(0, len(positions), step)]
        return batch, tasks

    def __len__(self) -> int:
        """Number of batches."""
        return -(-len(self.paths) // self.batch_size)

    def __iter__(self) -> Iterator[DecodedBatch]:
        starts = iter(range(0, len(self.paths), self.batch_size))
        pool = ThreadPoolExecutor(max_workers=max(1, self.workers), thread_name_prefix="decode")
        pending: deque[tuple[DecodedBatch, list[Future]]] = deque()
        try:
            for start in starts:
                pending.append(self._submit_batch(pool, start))
                if len(pending) > max(0, self.prefetch):
                    break
            while pending:
                batch, tasks = pending.popleft()
                for task in tasks:
                    task.result()
                next_start = next(starts, None)
                if next_start is not None:
                    pending.append(self._submit_batch(pool, next_start))
                yield batch
        finally:
            # On Ctrl-C or an error downstream, do not decode batches nobody will read.
            pool.shutdown(wait=True, cancel_futures=True)
