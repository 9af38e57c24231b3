"""Content-addressed feature cache: HDF5 shards of backbone features keyed by image sha256.

Importing this package never imports TensorFlow: reading features costs h5py and numpy only.

>>> from cache import FeatureStore
>>> store = FeatureStore(".pipeline/cache", "vgg16-1a2b3c4d5e6f7a8b")
>>> store.get(["<sha256>", ...])            # (N, 4, 4, 512) float32
>>> store.to_dask(all_sha256)               # lazy, for caches larger than memory
"""

from .manifest import ShardRecord
from .store import (
    CacheError,
    CacheLockedError,
    CacheLockWaitWarning,
    CacheWriteError,
    FeatureStore,
    MissingFeaturesError,
    StoreStats,
    list_stores,
)
from .writer import ShardWriter

__all__ = ["CacheError", "CacheLockedError", "CacheLockWaitWarning", "CacheWriteError",
           "FeatureStore", "MissingFeaturesError", "ShardRecord", "ShardWriter", "StoreStats",
           "list_stores"]
