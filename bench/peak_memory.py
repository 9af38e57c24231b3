"""Peak memory of a measured process, for the benches that run each step in a child process."""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident set size, MiB: ``VmHWM`` of /proc/self/status.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries into it the peak of the address
    space an ``exec`` replaced, so a child started by a parent holding 1.4 GB reports at least
    1.4 GB whatever it uses itself.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return _maxrss_mib(resource.RUSAGE_SELF)


def children_peak_rss_mb() -> float:
    """The largest peak resident set size among this process's waited-for children, MiB.

    An upper bound only: ``ru_maxrss`` counts, for a child, what its parent held when it was
    forked or spawned (a helper forked by a 2 GB process reports 2 GB), so read it as "no
    child went above this"."""
    return _maxrss_mib(resource.RUSAGE_CHILDREN)


def _maxrss_mib(who: int) -> float:
    # kilobytes on Linux, bytes on macOS
    return resource.getrusage(who).ru_maxrss / (1024 ** 2 if sys.platform == "darwin" else 1024)
