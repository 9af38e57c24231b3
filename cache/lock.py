"""The write lock of one fingerprint's cache: at most one process adds shards at a time.

The lock is an OS-level lock on ``.write.lock`` (filelock): the kernel releases it when its
holder dies, even by SIGKILL, so a crashed writer never blocks the next one. Beside it,
``.write.holder`` says who holds it (pid, host, since when), so that a process refused or
kept waiting can name the holder.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from datetime import datetime, timezone
from pathlib import Path

import filelock

from .errors import CacheLockedError, CacheLockWaitWarning
from .files import write_atomic

LOCK_NAME = ".write.lock"
HOLDER_NAME = ".write.holder"


class WriteLock:
    """The held write lock of the cache folder ``folder``; :meth:`release` gives it up.

    ``timeout`` is how many seconds to wait for another holder: 0 refuses at once with
    :class:`CacheLockedError` naming the holder, a negative number waits forever; a wait is
    announced with a :class:`CacheLockWaitWarning`.
    """

    def __init__(self, folder: Path, timeout: float = 0.0):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = filelock.FileLock(str(folder / LOCK_NAME))
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            if timeout == 0:
                raise CacheLockedError(self._locked_message(timeout)) from None
            patience = "until it finishes" if timeout < 0 else f"up to {timeout:g} s"
            warnings.warn(f"cache {folder} is being written by {self.holder()}; waiting "
                          f"{patience} (cache.lock_timeout)", CacheLockWaitWarning, stacklevel=3)
            try:
                self._lock.acquire(timeout=timeout)
            except filelock.Timeout:
                raise CacheLockedError(self._locked_message(timeout)) from None
        try:
            write_atomic(folder / HOLDER_NAME, json.dumps({
                "pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.now(timezone.utc).isoformat(timespec="seconds")},
                indent=2, sort_keys=True) + "\n")
        except BaseException:
            self._lock.release()
            raise

    def holder(self) -> str:
        """Who holds the lock, as the holder recorded it ("another process" if unknown)."""
        try:
            holder = json.loads((self.folder / HOLDER_NAME).read_text())
            return f"pid {holder['pid']} on {holder['host']} since {holder['since']}"
        except (OSError, ValueError, KeyError):
            return "another process"

    def _locked_message(self, timeout: float) -> str:
        waited = f" (waited {timeout:g} s)" if timeout > 0 else ""
        return (f"cache {self.folder} is being written by {self.holder()}{waited}; wait "
                f"for it to finish, or set cache.lock_timeout (seconds, -1 = wait forever) to "
                f"wait for it")

    def release(self) -> None:
        """Give the lock up (the holder record goes first)."""
        (self.folder / HOLDER_NAME).unlink(missing_ok=True)
        self._lock.release()
