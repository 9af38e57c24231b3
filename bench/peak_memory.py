"""Peak memory of a measured process, for the benches that run each step in a child process."""

from __future__ import annotations

import resource
import sys
import threading
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


class TreePeak:
    """The peak, over a command's life, of the resident set sizes of a process and all its
    descendants summed (MiB), sampled every ``interval`` seconds from a thread of the
    measuring process: what the command holds at once when it runs work in child processes.

    A sum of RSS counts the pages of a shared library once per process that maps it, so it
    is an upper bound; a peak shorter than the interval can be missed (each process's own
    ``VmHWM`` is the check on that)."""

    def __init__(self, pid: int, interval: float = 0.1):
        import psutil  # dask.distributed's dependency; only the benches sample trees

        self._root, self._interval = psutil.Process(pid), interval
        self._errors = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> TreePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                processes = [self._root, *self._root.children(recursive=True)]
            except self._errors:
                return  # the command ended
            total = 0
            for process in processes:
                try:
                    total += process.memory_info().rss
                except self._errors:
                    pass  # ended between the listing and the reading
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self._stop.wait(self._interval)
