"""Peak memory of a measured process, for the benches that run each step in a child process."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident set size, MB: ``VmHWM`` of /proc/self/status.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries into it the peak of the address
    space an ``exec`` replaced, so a child started by a parent holding 1.4 GB reports at least
    1.4 GB whatever it uses itself.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def children_peak_rss_mb() -> float:
    """The largest peak resident set size among this process's waited-for children, MB
    (a dask LocalCluster's workers; forked helpers share pages with their parent)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
