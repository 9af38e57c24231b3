"""Values made fit for JSON files that other tools read (metrics.json, leaderboards, --json)."""

from __future__ import annotations

import json
import math
from typing import Any

from cache.files import sha256_text


def json_safe(value):
    """``value`` with every NaN or infinite float, however deep in dicts and lists, replaced by
    None (JSON has neither; a missing score reads as null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def json_text(payload: Any) -> str:
    """``payload`` as indented JSON for people and scripts (``--json``): non-finite numbers as
    null, so that any JSON parser reads it."""
    return json.dumps(json_safe(payload), indent=2, allow_nan=False)


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON: sorted keys, ASCII, anything else as its ``str``."""
    return json.dumps(value, sort_keys=True, default=str)


def json_digest(value: Any) -> str:
    """The sha256 (hex) of ``value`` as :func:`canonical_json`: the identity the lock records
    of a bulky input, and of a dataset view."""
    return sha256_text(canonical_json(value))
