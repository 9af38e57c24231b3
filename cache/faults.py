"""Named crash points for fault-injection tests.

The cache promises that a crash at any moment loses no finished work. To test that promise
at exact moments (half-way through a shard write, between the shard rename and the manifest
append) instead of at whatever moment a timer happens to hit, the writer calls
:func:`fault_point` at each such moment. In normal runs it is a dictionary lookup and does
nothing. Code that uses the cache may declare points of its own and call :func:`fault_point`
with their names; this module knows only the cache's.

A test sets ``PIPELINE_FAULT=<point>:<n>[:<action>]`` in the environment of the process it
wants to crash: at the n-th time (1-based) the process passes ``<point>``, it either kills
itself with SIGKILL (``kill``, the default: no cleanup code runs, as with ``kill -9``), raises
``KeyboardInterrupt`` (``interrupt``, as Ctrl-C does), raises
:class:`~cache.errors.InjectedFault` (``raise``), fails like a full disk (``enospc``:
``OSError(ENOSPC)`` at that pass and every later one, as a full disk stays full), or pauses
(``wait``): it creates the file ``$PIPELINE_FAULT_RELEASE.waiting`` and waits until the file
``$PIPELINE_FAULT_RELEASE`` exists, so that a test can run other commands against the cache
at that exact moment (two extractions at once, gc, verify).

With ``PIPELINE_FAULT_ONCE=<file>`` as well, the fault fires only in the first process to
create that file: of the workers of a cluster, which all inherit the environment, exactly one
dies (and the partition it ran is run again elsewhere).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

from .errors import InjectedFault

ENV_VAR = "PIPELINE_FAULT"
RELEASE_ENV_VAR = "PIPELINE_FAULT_RELEASE"
ONCE_ENV_VAR = "PIPELINE_FAULT_ONCE"
WAIT_SECONDS = 300.0  # a test that never releases fails instead of hanging

#: Every point the cache's writer passes, in the order one shard goes through them.
POINTS = (
    "shard.begin",           # about to create the temporary shard file
    "shard.written",         # data written to the temporary file, not yet renamed
    "shard.renamed",         # shard has its final name, manifest not yet updated
    "manifest.partial",      # half of the manifest line written, the rest not yet
    "manifest.appended",     # manifest line written and synced
    "index.ingest",          # a journal line taken into index.sqlite's transaction, uncommitted
)

_hits: dict[str, int] = {}


def reset() -> None:
    """Forget how often each point was passed (for tests that inject in their own process)."""
    _hits.clear()


def inject(spec: str | None, once: str | None = None) -> None:
    """Set (or with None, clear) this process's fault and once-token, and forget earlier
    passes: what a test runs on the workers of a cluster (``client.run(inject, ...)``)."""
    for name, value in ((ENV_VAR, spec), (ONCE_ENV_VAR, once)):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    reset()


def fault_point(name: str) -> None:
    """Mark a moment at which a test may crash this process (see module docstring)."""
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return
    parts = spec.split(":")
    if parts[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    wanted = int(parts[1]) if len(parts) > 1 and parts[1] else 1
    action = parts[2] if len(parts) > 2 else "kill"
    if action == "enospc":
        if _hits[name] >= wanted and (_hits[name] > wanted or _first_to_claim()):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return
    if _hits[name] != wanted or not _first_to_claim():
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "interrupt":
        raise KeyboardInterrupt(f"injected at {name}")
    elif action == "wait":
        _wait_for_release(name)
    else:
        raise InjectedFault(f"injected fault at {name} (hit {wanted})")


def _first_to_claim() -> bool:
    token = os.environ.get(ONCE_ENV_VAR)
    if not token:
        return True
    try:
        os.close(os.open(token, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _wait_for_release(name: str) -> None:
    release = Path(os.environ[RELEASE_ENV_VAR])
    Path(f"{release}.waiting").touch()
    deadline = time.monotonic() + WAIT_SECONDS
    while not release.exists():
        if time.monotonic() > deadline:
            raise InjectedFault(f"waited {WAIT_SECONDS:.0f} s at {name} for {release}")
        time.sleep(0.05)
