"""The writers of one extraction: one per store it adds rows to, opened in a fixed order."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from cache import ShardWriter, open_writer

from ..context import RunContext


@contextlib.contextmanager
def open_writers(ctx: RunContext, parts: tuple[str, ...]) -> Iterator[
        tuple[ShardWriter, dict[str, ShardWriter]]]:
    """Hold the write locks of the view's home store and of each part's store; yields (the
    home store's writer, which records rejected images, {part: writer}).

    The locks are taken in the order of the stores' paths, whatever the parts, so two
    extractions that share stores never wait for each other in a circle. Closing commits what
    each writer buffered, also after an error.
    """
    params, cache = ctx.config.stages.extract, ctx.config.cache
    folders = {ctx.store.path: (ctx.store, ctx.fingerprint.description)}
    for part in parts:
        folders.setdefault(ctx.stores[part].path, (ctx.stores[part], ctx.description(part)))
    with contextlib.ExitStack() as stack:
        opened = {}
        for path in sorted(folders):
            store, description = folders[path]
            opened[path] = stack.enter_context(open_writer(
                store, description, shard_rows=params.shard_size,
                flush_seconds=params.flush_seconds, lock_timeout=cache.lock_timeout))
        yield opened[ctx.store.path], {part: opened[ctx.stores[part].path] for part in parts}
