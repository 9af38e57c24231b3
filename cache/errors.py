"""Every error and warning the cache raises on purpose.

Errors derive from :class:`CacheError`, whose message says what went wrong and what to do; the
``pipeline`` command prints it as one line. Warnings are named classes that callers can filter.
"""

from __future__ import annotations


class CacheError(Exception):
    """A cache operation cannot proceed; the message says why and what to do."""


class CacheLockedError(CacheError):
    """Another process holds the write lock of this fingerprint's cache."""


class CacheWriteError(CacheError):
    """A shard or manifest write failed (disk full, no permission); what was committed before
    it is intact."""


class MissingFeaturesError(CacheError, KeyError):
    """Features were asked for images that are not in the cache."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class InjectedFault(CacheError):
    """Raised at a fault point when a fault-injection test asked for action ``raise``."""


class CacheLockWaitWarning(UserWarning):
    """Another process holds the write lock, and this one waits for it (cache.lock_timeout)."""


class CacheDatabaseWarning(UserWarning):
    """The cache folder's index.sqlite could not be read and was started afresh: images are
    hashed and manifests indexed once more; nothing is lost."""


class CacheIndexedWarning(UserWarning):
    """A large store written before the entry index existed was indexed from its manifest
    (once; nothing is recomputed)."""
