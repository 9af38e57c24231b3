"""Run folders: every ``pipeline run`` writes its own, so experiments never overwrite each other.

``<runs.dir>/<YYYYmmdd-HHMMSS>-<stages>-<4 hex>/`` holds ``config.yaml`` (the resolved
configuration), ``metrics.json`` (flat keys such as ``extract.images_per_second``), and what
each stage adds (``dataset.csv``, ``skipped.csv``, ``summary.txt``, ...).
"""

from __future__ import annotations

import json
import math
import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from .config import PipelineConfig


@dataclass
class RunFolder:
    """One run's output folder and its accumulated metrics."""

    path: Path
    metrics: dict[str, float | int | str] = field(default_factory=dict)

    @classmethod
    def create(cls, config: PipelineConfig, stages: list[str]) -> RunFolder:
        """Make a new, uniquely named run folder and snapshot the configuration into it."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        name = f"{stamp}-{'+'.join(stages)}-{secrets.token_hex(2)}"
        path = config.runs.dir / name
        path.mkdir(parents=True, exist_ok=False)
        run = cls(path)
        snapshot = {"source": str(config.source) if config.source else None,
                    **config.to_yaml_dict()}
        (path / "config.yaml").write_text(yaml.safe_dump(snapshot, sort_keys=False),
                                          encoding="utf-8")
        return run

    def record(self, metrics: dict[str, float | int | str]) -> None:
        """Add flat metrics (``stage.name`` keys) and rewrite ``metrics.json``; NaN values (a
        score with nothing to score) are left out, as JSON has no NaN."""
        self.metrics.update({k: v for k, v in metrics.items()
                             if not (isinstance(v, float) and math.isnan(v))})
        temp = self.path / ".metrics.json.tmp"
        temp.write_text(json.dumps(self.metrics, indent=2, sort_keys=True) + "\n",
                        encoding="utf-8")
        os.replace(temp, self.path / "metrics.json")
