"""RunContext: what one command resolves from its configuration, once, and hands down.

A command (``pipeline run``, ``status``, ``report``, ``predict``, ...) makes one context; every
stage and function it calls takes what it needs from there instead of deriving it again:

- ``spec``: the backbone (weights file located; ImageNet's downloaded only when the command
  may download, see ``allow_download``);
- ``fingerprint``: the backbone fingerprint (hashes the weights file once), and
  ``tap_fingerprints``, one per tap of ``backbone.taps``;
- ``store``: the :class:`~cache.FeatureStore` of the output's fingerprint, home of the dataset
  view (even when only taps are kept); ``stores``: the store of each part the cache keeps;
- ``view_file`` / ``view``: the dataset view extract wrote for this data and split.

Each is computed on first use, so a command that never needs the backbone (``cache ls``) never
resolves it. Commands that only read pass ``allow_download=False``: with ``weights: imagenet``
and no weights file, ``spec`` then raises :class:`~pipeline.errors.BackboneWeightsError` at once
instead of starting Keras' 58 MB download.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from cache import FeatureStore

from .backbone import BackboneSpec, Fingerprint, backbone_spec
from .config import OUTPUT, PipelineConfig
from .data.listing import DataFolderListing, list_data_folder
from .data.view import DatasetView, read_view, view_id, write_view
from .errors import MissingViewError

T = TypeVar("T")


class RunContext:
    """The resolved backbone, fingerprint, store and dataset view of one command's config."""

    def __init__(self, config: PipelineConfig, allow_download: bool = True,
                 rehash: bool = False):
        self.config = config
        self.allow_download = allow_download
        # read every image's bytes again, not trusting the hash state's recorded stats
        self.rehash = rehash
        self._view: DatasetView | None = None
        self._once: dict[str, Any] = {}

    def once(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()`` the first time this command asks for ``key``, the same value after:
        for inputs that one command should read once (the data folder's listing, asked before
        a stage runs and recorded after)."""
        if key not in self._once:
            self._once[key] = compute()
        return self._once[key]

    def data_listing(self) -> DataFolderListing:
        """This command's one walk of ``data.root``, every file's stat
        (:mod:`pipeline.data.listing`): taken when first asked for (by the lock's check of the
        data folder, or by extract's scan), the same listing after."""
        return self.once("data_listing", lambda: list_data_folder(self.config.data.root))

    def __repr__(self) -> str:
        return f"RunContext({self.config.source_name!r})"

    @cached_property
    def spec(self) -> BackboneSpec:
        """The backbone of the configuration (:class:`BackboneWeightsError` when its weights
        are missing and may not be downloaded)."""
        return backbone_spec(self.config, self.allow_download)

    @cached_property
    def fingerprint(self) -> Fingerprint:
        """The backbone fingerprint (its id names the cache folder)."""
        return self.spec.fingerprint()

    @cached_property
    def tap_fingerprints(self) -> dict[str, Fingerprint]:
        """The fingerprint of each tap, by tap name."""
        return {tap: self.spec.tap_fingerprint(tap) for tap in self.spec.taps}

    @cached_property
    def store(self) -> FeatureStore:
        """The store of the output's fingerprint: its features, and the dataset views."""
        return FeatureStore(self.config.cache.dir, self.fingerprint.id)

    @cached_property
    def stores(self) -> dict[str, FeatureStore]:
        """The store of each part extract caches: ``output`` (unless ``keep_output`` is off)
        and each tap."""
        stores = {OUTPUT: self.store} if self.spec.keep_output else {}
        for tap, fingerprint in self.tap_fingerprints.items():
            stores[tap] = FeatureStore(self.config.cache.dir, fingerprint.id)
        return stores

    def description(self, part: str) -> dict:
        """What ``part``'s fingerprint is made of (written as the store's fingerprint.json)."""
        return self.fingerprint.description if part == OUTPUT else \
            self.tap_fingerprints[part].description

    @cached_property
    def view_id(self) -> str:
        """Identifies the dataset view by data root and split settings."""
        return view_id(self.config)

    @property
    def view_file(self) -> Path:
        """Where the dataset view of this data and split lives, inside the store."""
        return self.store.views_dir() / f"{self.view_id}.json"

    def read_view(self) -> DatasetView | None:
        """The dataset view extract wrote (None when there is none yet)."""
        if self._view is None and self.view_file.is_file():
            self._view = read_view(self.view_file)
        return self._view

    def write_view(self, view: DatasetView) -> Path:
        """Store ``view`` as this data's dataset view (what extract does last)."""
        write_view(view, self.view_file)
        self._view = view
        return self.view_file

    def require_view(self, parts: tuple[str, ...] = (), augmented: bool = False) -> DatasetView:
        """The dataset view, after checking that the cache holds ``parts`` (the output, taps)
        of every image (and, with ``augmented``, of every augmented copy):
        :class:`MissingViewError` otherwise."""
        view = self.read_view()
        if view is None:
            raise MissingViewError(f"no dataset view for this data and backbone in "
                                   f"{self.store.path}: run `pipeline run extract` first")
        keys = [item.key for item in view.augmented_copies()] if augmented else []
        for part in parts:
            store = self.stores.get(part)
            if store is None:
                raise MissingViewError(f"the cache keeps no {part} for this backbone (see "
                                       f"backbone.taps and backbone.keep_output)")
            missing = store.missing(view.images.keys())
            if missing:
                raise MissingViewError(f"{len(missing)} of {len(view.images)} images of the "
                                       f"dataset view have no cached {part} in {store.path}: "
                                       f"run `pipeline run extract` again")
            missing = store.missing(keys)
            if missing:
                raise MissingViewError(f"{len(missing)} of {len(keys)} augmented copies of the "
                                       f"dataset view are not cached in {store.path}: run "
                                       f"`pipeline run extract` again, or set "
                                       f"stages.heads.augmented_copies: false")
        return view
