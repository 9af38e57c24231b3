"""The runner: which stages a ``pipeline run`` needs, which are up to date, and the lock.

Each stage declares what it reads and what it writes, as DVC's dvc.yaml does:

========  ==============================================  ===============================
stage     inputs (deps and params)                        outputs
========  ==============================================  ===============================
extract   the data folder (every file's path, size and    the dataset view and its cache
          mtime), the backbone fingerprint; ``data``,     entries
          ``backbone``, ``cache.dir``, ``stages.extract``
heads     the dataset view; ``stages.heads``              ``<run>/heads``, leaderboard
finetune  the dataset view, the warm-start head (when     ``<run>/finetune/model.keras``
          ``head_from: auto``, heads runs first);
          ``stages.finetune``
scratch   the dataset view; ``stages.scratch``            ``<run>/scratch/model.keras``
========  ==============================================  ===============================

After a stage succeeds, ``pipeline.lock`` (beside stages.yaml) records the hash of each input,
the parameter values and where the outputs are. A later run skips a stage whose inputs and
parameters are unchanged and whose outputs still exist, and says so; ``--force`` reruns the
stages named on the command line. ``pipeline status`` compares the same things and names what
changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cache import FeatureStore

from .config import PipelineConfig
from .fingerprint import backbone_fingerprint, backbone_spec
from .views import read_view, view_path

STAGE_ORDER = ("extract", "heads", "finetune", "scratch")
LOCK_NAME = "pipeline.lock"
LOCK_FORMAT = 1


def lock_path(config: PipelineConfig) -> Path:
    """``pipeline.lock`` beside stages.yaml (beside the runs folder for an in-memory config)."""
    folder = config.source.resolve().parent if config.source else config.runs.dir.parent
    return folder / LOCK_NAME


def dependencies(config: PipelineConfig, stage: str) -> list[str]:
    """The stages ``stage`` needs to have run first, in order."""
    if stage == "extract":
        return []
    if stage == "finetune" and config.stages.finetune.head_from == "auto":
        return ["extract", "heads"]
    return ["extract"]


def plan(config: PipelineConfig, targets: list[str]) -> list[str]:
    """``targets`` and everything they depend on, in pipeline order (``all``: every stage)."""
    if "all" in targets:
        return list(STAGE_ORDER)
    wanted = set(targets)
    for target in targets:
        wanted.update(dependencies(config, target))
    return [stage for stage in STAGE_ORDER if stage in wanted]


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def stage_params(config: PipelineConfig, stage: str) -> dict:
    """The parameters a stage reads, as plain data (what the lock records and compares)."""
    document = config.to_yaml_dict()
    if stage == "extract":
        return {"data": document["data"], "backbone": document["backbone"],
                "cache.dir": document["cache"]["dir"],
                "stages.extract": document["stages"]["extract"]}
    return {f"stages.{stage}": document["stages"][stage]}


def _data_listing(root: Path) -> dict:
    """Every file under ``root``: count and a hash of (path, size, mtime) - cheap, no reading."""
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            try:
                stat = path.stat()
            except OSError:
                continue
            entries.append((str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns))
    return {"files": len(entries), "hash": _digest(entries)}


def _view_file(config: PipelineConfig) -> Path:
    fingerprint, _ = backbone_fingerprint(backbone_spec(config))
    return view_path(config, FeatureStore(config.cache.dir, fingerprint))


def _view_hash(config: PipelineConfig) -> str | None:
    """The content of the dataset view (its write time left out), or None when there is none."""
    try:
        view = json.loads(_view_file(config).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    view.pop("created", None)
    return _digest(view)


def skipped_in_view(config: PipelineConfig) -> int:
    """How many files the current dataset view leaves out (0 when there is no view)."""
    try:
        return len(read_view(_view_file(config)).skipped)
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def stage_deps(config: PipelineConfig, stage: str, lock: dict) -> dict:
    """The current hash of every input of ``stage``."""
    if stage == "extract":
        return {"data": _data_listing(config.data.root),
                "backbone": backbone_fingerprint(backbone_spec(config))[0]}
    deps = {"dataset_view": _view_hash(config)}
    if stage == "finetune" and config.stages.finetune.head_from is not None:
        head = config.stages.finetune.head_from
        if head == "auto":  # the heads stage's last outputs
            head = (lock.get("stages", {}).get("heads") or {}).get("run")
        deps["warm_start_head"] = head and str(head)
    return deps


def _missing_outputs(stage: str, entry: dict, config: PipelineConfig) -> str | None:
    """Why ``stage``'s recorded outputs are not all there any more, or None."""
    if stage == "extract":
        if _view_hash(config) != entry.get("outs", {}).get("dataset_view"):
            return "outputs missing (the dataset view changed or is gone)"
        fingerprint, _ = backbone_fingerprint(backbone_spec(config))
        store = FeatureStore(config.cache.dir, fingerprint)
        view = read_view(view_path(config, store))
        keys = [image.sha256 for image in view.images]
        keys += [key for key, _, _ in view.augmented_views()]
        missing = store.missing(keys)
        if missing:
            return (f"outputs missing ({len(missing)} cached entries of the dataset view are "
                    f"missing or damaged)")
        return None
    run = Path(entry.get("run", ""))
    wanted = {"heads": run / "leaderboard.csv", "finetune": run / "finetune" / "model.keras",
              "scratch": run / "scratch" / "model.keras"}[stage]
    return None if wanted.is_file() else f"outputs missing (expected {wanted})"


@dataclass(frozen=True)
class StageState:
    """Whether a stage is up to date, and if not, why."""

    stage: str
    up_to_date: bool
    reasons: tuple[str, ...] = ()
    run: str = ""           # the run folder that holds its outputs (up to date only)


def _flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _param_changes(old: dict, new: dict) -> list[str]:
    before, after = _flatten(old), _flatten(new)
    changes = []
    for key in sorted(set(before) | set(after)):
        if before.get(key, "<unset>") != after.get(key, "<unset>"):
            changes.append(f"parameter {key} changed ({before.get(key, '<unset>')} -> "
                           f"{after.get(key, '<unset>')})")
    return changes


def read_lock(config: PipelineConfig) -> dict:
    """The lock's contents ({} when there is none or it cannot be read)."""
    try:
        lock = json.loads(lock_path(config).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return lock if lock.get("format") == LOCK_FORMAT else {}


def stage_state(config: PipelineConfig, stage: str, lock: dict) -> StageState:
    """Compare ``stage``'s recorded inputs, parameters and outputs with the current ones."""
    entry = lock.get("stages", {}).get(stage)
    if not entry:
        return StageState(stage, False, ("never run (no entry in pipeline.lock)",))
    reasons = _param_changes(entry.get("params", {}), stage_params(config, stage))
    deps = stage_deps(config, stage, lock)
    for name, value in deps.items():
        if entry.get("deps", {}).get(name) != value:
            reasons.append({"data": "data folder changed (files added, removed or modified)",
                            "backbone": "backbone fingerprint changed",
                            "dataset_view": "dataset view changed (extract found other images)",
                            "warm_start_head": "warm-start head changed (heads ran again)",
                            }.get(name, f"{name} changed"))
    if not reasons:
        missing = _missing_outputs(stage, entry, config)
        if missing:
            reasons.append(missing)
    return StageState(stage, not reasons, tuple(reasons), "" if reasons else entry.get("run", ""))


def record_stage(config: PipelineConfig, stage: str, run: Path | None) -> None:
    """Write ``stage``'s inputs, parameters and outputs into the lock (after it succeeded)."""
    lock = read_lock(config) or {"format": LOCK_FORMAT, "stages": {}}
    entry = {"params": stage_params(config, stage), "deps": stage_deps(config, stage, lock),
             "run": str(run) if run else "",
             "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if stage == "extract":
        entry["outs"] = {"dataset_view": _view_hash(config)}
    lock["stages"][stage] = json.loads(json.dumps(entry, default=str))
    path = lock_path(config)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temp, path)


def format_status(config: PipelineConfig) -> str:
    """One line per stage: up to date (and where its outputs are) or stale, and why."""
    lock = read_lock(config)
    lines, stale = [], set()
    for stage in STAGE_ORDER:
        state = stage_state(config, stage, lock)
        upstream = [d for d in dependencies(config, stage) if d in stale]
        reasons = list(state.reasons)
        if upstream:  # it runs after them, and their new outputs may change its inputs
            reasons.append(f"depends on stale {', '.join(upstream)}")
        if reasons:
            stale.add(stage)
            lines.append(f"{stage}: stale: {'; '.join(reasons)}")
        else:
            where = f" (outputs in {state.run})" if state.run else ""
            lines.append(f"{stage}: up to date{where}")
    return "\n".join(lines)
