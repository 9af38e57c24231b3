"""The extraction loop, shared by the local run and every cluster partition: decoded batches
-> the backbone (its output and its taps, in one pass) -> feature rows handed on, failures
reported, a fault point between batches.

Three things overlap: decoding (the batch reader's threads), the backbone (this thread), and
whatever takes the rows (one more thread: the cache writer buffers them and commits a shard,
fsync included, every ``shard_size`` rows, which would otherwise leave the backbone idle).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cached_property

import numpy as np

from cache.faults import fault_point

from ..backbone import BackboneSpec
from ..data.batches import BatchReader

#: Fault points the extraction loop passes, between the cache writer's (cache.faults.POINTS).
FAULT_POINTS = (
    "extract.batch",         # a batch's features handed on, maybe not yet committed
)


class Inference:
    """The backbone as a function: (B, h, w, 3) float32 RGB pixels -> ``{part: (B, ...)}``
    float32 numpy features, for ``parts`` (default ``spec.parts``: the output tensor
    :data:`~pipeline.backbone.spec.OUTPUT` and the taps). The model is built on first use, so
    Keras (and TensorFlow, on its backend) is imported only by a run that has something to
    compute, and only as deep as the deepest part needs."""

    def __init__(self, spec: BackboneSpec, parts: Sequence[str] | None = None):
        self.spec = spec
        self.parts = tuple(parts or spec.parts)

    @cached_property
    def _function(self):
        from ..backbone.model import build_feature_extractor
        from ..nn.inference import compiled_inference
        return compiled_inference(build_feature_extractor(self.spec, self.parts))

    def build(self) -> None:
        """Import Keras and build the model now (so that timed loops exclude it)."""
        _ = self._function

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        return dict(self._function(pixels))


class _HandOn:
    """Calls made in order on one background thread, at most ``ahead`` waiting. The first that
    fails makes the later ones no-ops, and its error is raised in the caller's thread by the
    next call or by :meth:`finish`, as a call made in place would have raised it."""

    def __init__(self, ahead: int = 2):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hand-on")
        self._pending: deque[Future] = deque()
        self._ahead = ahead
        self._failed = False

    def _run(self, function: Callable, args: tuple) -> None:
        if self._failed:
            return
        try:
            function(*args)
        except BaseException:
            self._failed = True
            raise

    def __call__(self, function: Callable, *args) -> None:
        while len(self._pending) >= self._ahead:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._run, function, args))

    def finish(self) -> None:
        """Wait for every call; raise the first error."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True)


def extract_batches(reader: BatchReader, keys: Sequence[str], infer: Inference,
                    on_features: Callable[[list[str], dict[str, np.ndarray]], None],
                    on_failure: Callable[[str, str, bool], None],
                    on_batch: Callable[[int], None] = lambda n: None) -> None:
    """Run ``infer`` on every batch of ``reader`` (whose items are ``keys``, in order).

    ``on_features(keys, {part: rows})`` receives the rows (n, ...) float32 of each part for the
    images that decoded; ``on_failure(key, reason, permanent)`` each image that did not
    (``permanent``: the bytes themselves are bad, trying again is pointless); ``on_batch(n)``
    the size of each batch. ``on_features`` and ``on_failure`` run in one background thread,
    in batch order, while the next batch computes; every call has returned when this does,
    also when it raises (an error of theirs is raised here).
    """
    hand_on = _HandOn()
    try:
        for batch in reader:
            if batch.ok.any():
                features = infer(batch.pixels)
                hand_on(on_features, [keys[i] for i in batch.positions[batch.ok]],
                        {part: rows[batch.ok] for part, rows in features.items()})
            for i in batch.positions[~batch.ok]:
                hand_on(on_failure, keys[i], reader.failures.get(int(i), "could not be decoded"),
                        int(i) not in reader.transient)
            on_batch(len(batch.positions))
            fault_point("extract.batch")
    finally:
        hand_on.finish()
