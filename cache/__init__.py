"""Content-addressed feature cache: HDF5 shards of backbone features keyed by image sha256.

What it offers:

- :class:`FeatureStore` (:mod:`cache.reader`): read one fingerprint's features as numpy or as a
  lazy dask array, without any lock; :class:`StoreRows` (``store.rows``) reads a fixed list of
  images many times, located once; :func:`list_stores` lists the fingerprints of a cache;
- :func:`open_writer` (:mod:`cache.writer`): the one process allowed to add shards, after
  crash recovery (:mod:`cache.recovery`) under the OS write lock (:mod:`cache.lock`);
- :mod:`cache.maintenance`: verify entries against their checksums, plan garbage collection;
- :mod:`cache.files`: atomic writes and sha256, the file primitives the whole project uses;
- :mod:`cache.errors`: every error and warning of the cache; :mod:`cache.faults`: the named
  fault points of fault-injection tests.

Importing this package never imports TensorFlow, nor anything of the pipeline: reading
features costs h5py and numpy only.

>>> from cache import FeatureStore
>>> store = FeatureStore(".pipeline/cache", "vgg16-1a2b3c4d5e6f7a8b")
>>> store.get(["<sha256>", ...])            # (N, 4, 4, 512) float32
>>> store.to_dask(all_sha256)               # lazy, for caches larger than memory
>>> store.rows(split_sha256).read([5, 0])   # (2, 4, 4, 512) float32, epoch after epoch
"""

from .errors import (
    CacheError,
    CacheLockedError,
    CacheLockWaitWarning,
    CacheWriteError,
    MissingFeaturesError,
)
from .manifest import ShardRecord
from .reader import FeatureStore, StoreRows, StoreStats, list_stores
from .writer import ShardWriter, open_writer

__all__ = ["CacheError", "CacheLockedError", "CacheLockWaitWarning", "CacheWriteError",
           "FeatureStore", "MissingFeaturesError", "ShardRecord", "ShardWriter", "StoreRows",
           "StoreStats", "list_stores", "open_writer"]
