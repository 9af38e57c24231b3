"""``python -m pipeline.heads.child``: trials fitted in a process of their own, which ends
with them (the other side of :func:`pipeline.heads.sweep.fit_and_score_apart`).

It reads one pickle from its standard input, ``(training data, trials)``, and writes to its
standard output one pickle per trial, in order, as each is done: what
:func:`~pipeline.heads.sweep.fit_and_score` returns (the fitted head packed, as it always
travels). Anything else the trial prints goes to standard error: the output is only pickles.

A plain interpreter, not :mod:`multiprocessing`: a spawned process imports the parent's
``__main__`` again, which reruns a user's script that calls the pipeline without an
``if __name__ == "__main__"`` guard.
"""

from __future__ import annotations

import os
import pickle
import sys


def main() -> None:
    # the pickles go to a copy of the output; whatever else writes to descriptor 1 (a
    # library's print, a C++ log) lands on standard error instead
    results = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from .sweep import fit_and_score

    data, trials = pickle.load(sys.stdin.buffer)
    for trial in trials:
        pickle.dump(fit_and_score(trial, data), results, protocol=pickle.HIGHEST_PROTOCOL)
        results.flush()
    results.close()
    sys.stderr.flush()
    # every result is sent: no interpreter shutdown, which with TensorFlow's threads loaded
    # is slow and can hang while the parent waits
    os._exit(0)


if __name__ == "__main__":
    main()
