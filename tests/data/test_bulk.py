"""The garbage collector paused around bulk bookkeeping, and running again where asked."""

from __future__ import annotations

import gc

from pipeline.data.bulk import gc_paused, gc_running


def test_the_collector_is_paused_run_again_inside_and_left_as_found():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():                 # nested: still paused after the inner block
            pass
        assert not gc.isenabled()
        with gc_running():                # a dask client's event loop inside the scan
            assert gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_running():
            assert gc.isenabled()
        assert not gc.isenabled()         # left as it was found: disabled
    finally:
        gc.enable()
