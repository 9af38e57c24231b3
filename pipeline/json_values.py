"""Values made fit for JSON files that other tools read (metrics.json, leaderboards, --json)."""

from __future__ import annotations

import json
import math
from typing import Any


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
