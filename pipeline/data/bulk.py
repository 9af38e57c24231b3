"""Bulk per-image bookkeeping without the cyclic garbage collector walking it again and again.

Python runs a full collection whenever the objects that survived earlier ones have grown by a
quarter, and each walks every live container. Building 10^5 records (candidates, stats, image
records, the view) makes several such collections, each slower than the last: 0.3 s of a
1.9 s ``pipeline run extract --force`` at 10^5 images (AMD EPYC, 2 cores). The records hold
strings and numbers and make no reference cycles; what else runs in such a block (opening
databases, a thread pool) may make a few, which wait for the next collection after it. Reference
counting frees everything else as usual.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the ``with`` block (nested blocks: until the
    outermost ends); the collector is left as it was found."""
    with _collector(False):
        yield


@contextmanager
def gc_running() -> Iterator[None]:
    """Run the cyclic garbage collector for the ``with`` block, also inside :func:`gc_paused`
    (work that makes reference cycles as it goes, such as a dask client's event loop); the
    collector is left as it was found."""
    with _collector(True):
        yield


@contextmanager
def _collector(enabled: bool) -> Iterator[None]:
    was_enabled = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        yield
    finally:
        (gc.enable if was_enabled else gc.disable)()
