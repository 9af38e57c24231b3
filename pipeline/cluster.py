"""Where sweeps and extraction run: a dask client on a LocalCluster, or on a running scheduler.

For sweeps, ``local`` starts one single-threaded worker process per core (or
``cluster.workers``), with an environment that keeps every library to one thread; an address
connects to a running scheduler whose workers can import this package. Extraction runs in the
pipeline's own process unless ``cluster.scheduler`` is an address (a LocalCluster on the same
cores would only add copies of the model).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

from .config import ClusterConfig
from .errors import MultiThreadedWorkersWarning, SchedulerUnreachableError

# The environment of LocalCluster workers, replacing dask's default. One core per worker:
# TensorFlow, BLAS and OpenMP must not each start a thread per core in every worker. And no
# MALLOC_TRIM_THRESHOLD_=65536 (dask's default): it returns freed memory to the OS at once, and
# the allocation-heavy fits of a sweep pay for it in page faults (HistGradientBoosting, measured
# on 684 x 512 rows: 16.3 s in process, 22.0 s with the variable, 23.9 s in a default worker).
WORKER_ENVIRONMENT = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1,
                      "TF_NUM_INTRAOP_THREADS": 1, "TF_NUM_INTEROP_THREADS": 1,
                      "TF_CPP_MIN_LOG_LEVEL": 2}

# The HTTP server of a LocalCluster's scheduler (health checks, metrics; the dashboard is off)
# on a free port of this machine. With no address it asks for 8787, and where that port is
# taken (another cluster, a Jupyter proxy, a second run) dask moves to a free one anyway and
# warns the user about a server nobody uses (distributed 2026.8, node.start_http_server).
SCHEDULER_HTTP = {"dashboard_address": "127.0.0.1:0"}


def check_scheduler_address(address: str) -> None:
    """:class:`SchedulerUnreachableError` unless ``address`` is one dask can connect to (a
    known scheme, and a host with a port where the scheme needs one), decided without
    connecting: a malformed address is never mistaken for a slow scheduler."""
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import backends

    try:
        scheme, location = parse_address(address, strict=True)
        if scheme not in backends:
            raise ValueError(f"unknown scheme {scheme!r}; dask knows "
                             f"{', '.join(sorted(backends))}")
        if scheme != "inproc":
            parse_host_port(location)
    except ValueError as exc:
        raise SchedulerUnreachableError(
            f"cluster.scheduler {address}: not a dask scheduler address ({exc}); expected "
            f"tcp://host:8786") from None


@contextlib.contextmanager
def scheduler_client(address: str, timeout: str = "30s"):
    """A dask client connected to the scheduler at ``address``; a clear error if the address
    is malformed (decided before connecting) or no scheduler answers within ``timeout``."""
    from distributed import Client

    check_scheduler_address(address)
    try:
        client = Client(address, timeout=timeout)
    except ValueError as exc:  # what the check above cannot foresee, said the same way
        raise SchedulerUnreachableError(
            f"cluster.scheduler {address}: not a dask scheduler address ({exc}); expected "
            f"tcp://host:8786") from None
    except (OSError, TimeoutError) as exc:
        raise SchedulerUnreachableError(
            f"cluster.scheduler {address}: no dask scheduler answered ({exc}); start one with "
            f"`dask scheduler` and workers with `dask worker {address}`") from None
    with client:
        yield client


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system says, else every
    core of the machine)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@contextlib.contextmanager
def sweep_client(cluster: ClusterConfig):
    """A dask client for a sweep: on the scheduler of ``cluster.scheduler``, or on a new
    LocalCluster of single-threaded worker processes (``local``)."""
    import dask
    from distributed import Client, LocalCluster

    if cluster.on_scheduler:
        with scheduler_client(cluster.scheduler) as client:
            threads = client.nthreads()
            if any(n > 1 for n in threads.values()):
                warnings.warn(f"{sum(n > 1 for n in threads.values())} of {len(threads)} workers "
                              f"of {cluster.scheduler} run several threads; start them with "
                              f"`dask worker --nthreads 1` so that trials do not share a process",
                              MultiThreadedWorkersWarning, stacklevel=3)
            yield client
        return
    workers = cluster.workers or usable_cores()
    with dask.config.set({"distributed.nanny.pre-spawn-environ": WORKER_ENVIRONMENT}), \
            environment_kept() as restore:
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=None, scheduler_kwargs=SCHEDULER_HTTP,
                          silence_logs=logging.ERROR) as local:
            restore()  # the workers have their environment; this process gets its own back
            with Client(local) as client:
                yield client


@contextlib.contextmanager
def environment_kept():
    """Give this process back the values it had for the workers' pre-spawn variables (on
    exit, and whenever the yielded function is called). A LocalCluster's nannies live in this
    process and write the workers' pre-spawn environment into ``os.environ`` before each spawn
    (distributed 2026.8), so without this every later stage of the run, and every process it
    starts, would run with one thread per library. Only those variables are touched, one at a
    time: whatever else the run sets meanwhile stays."""
    names = [*WORKER_ENVIRONMENT, "PYTHONHASHSEED"]
    saved = {name: os.environ.get(name) for name in names}

    def restore() -> None:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            elif os.environ.get(name) != value:
                os.environ[name] = value

    try:
        yield restore
    finally:
        restore()
