"""Importing a library without the optional dependencies it would import for nothing we use.

Some libraries import another one at import time only to offer something the pipeline never
calls, when it is installed: TensorFlow's TFLite helpers import JAX (106 MiB of every process
that builds a model on the TensorFlow backend), skops imports PyTorch and dask to list their
scikit-learn wrappers (1 s of every heads run), scikit-learn and Keras import pandas, and
with it pyarrow, to take DataFrames (62 MiB of every process that fits or scores a head).
Python raises ImportError for a module whose ``sys.modules`` entry is None, and those
libraries go without it; the entries are removed afterwards, so the dependencies import as
usual later.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterable, Iterator

# reentrant: a module imported within a block may open one of its own (the pipeline's
# modules that import scikit-learn do so at their own import time)
_IMPORTING = threading.RLock()

#: pandas, and pyarrow with it: scikit-learn (1.9) and Keras (3.15) import them at import time
#: to take DataFrames, which the pipeline never hands them (62 MiB of a process). The pipeline
#: imports both within ``modules_marked_absent(DATAFRAME_LIBRARIES)``; both still take a
#: DataFrame handed to them after a later ``import pandas`` (scikit-learn looks for pandas
#: again, Keras converts it through numpy; tested).
DATAFRAME_LIBRARIES = ("pandas", "pyarrow")


@contextlib.contextmanager
def modules_marked_absent(names: Iterable[str]) -> Iterator[None]:
    """Within the block, importing any of ``names`` that is not imported yet raises
    ImportError. One thread's blocks at a time (they may nest); another thread that imports
    one of ``names`` meanwhile gets the ImportError too, so use it where no other thread
    needs them: around imports of libraries at a module's import time or a first save."""
    with _IMPORTING:
        absent = [name for name in names if name not in sys.modules]
        sys.modules.update(dict.fromkeys(absent))
        try:
            yield
        finally:
            for name in absent:
                if name in sys.modules and sys.modules[name] is None:
                    del sys.modules[name]
