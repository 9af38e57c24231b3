"""The keys of a run's ``metrics.json``: one constant (or key function) each, used by the stages
that write them and by everything that reads them (``pipeline runs``, the report, the CLI).

The table of keys in docs/reference/outputs.md is checked against :data:`DOCUMENTED` by a
test; keys that hold a name or a number use the placeholders ``<stage>``, ``<name>`` (a head)
and ``<phase>``. A key
renamed in a release keeps its former name in :data:`FORMER_NAMES`, and readers of earlier
runs' metrics go through :func:`read`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

EXTRACT_FINGERPRINT = "extract.fingerprint"
EXTRACT_IMAGES = "extract.images"
EXTRACT_IMAGES_NEW = "extract.images_new"
EXTRACT_IMAGES_CACHED = "extract.images_cached"
EXTRACT_IMAGES_SKIPPED = "extract.images_skipped"
EXTRACT_DUPLICATE_GROUPS = "extract.duplicate_groups"
EXTRACT_LEAKAGE_GROUPS = "extract.leakage_groups"
EXTRACT_SECONDS = "extract.seconds"
EXTRACT_INFERENCE_SECONDS = "extract.inference_seconds"
EXTRACT_IMAGES_PER_SECOND = "extract.images_per_second"
EXTRACT_AUGMENTED_COPIES_NEW = "extract.augmented_copies_new"
EXTRACT_AUGMENTED_COPIES_CACHED = "extract.augmented_copies_cached"
EXTRACT_AUGMENTED_COPIES_SECONDS = "extract.augmented_copies_seconds"

PROBE_FEATURES = "probe.features"
PROBE_BEST_FEATURE = "probe.best.feature"
PROBE_BEST_VAL_ACCURACY = "probe.best.val_accuracy"
PROBE_SECONDS = "probe.seconds"

HEADS_TRIALS = "heads.trials"
HEADS_TRAIN_IMAGES = "heads.train_images"
HEADS_TRAIN_AUGMENTED_COPIES = "heads.train_augmented_copies"
HEADS_FAILED_TRIALS = "heads.failed_trials"
HEADS_SWEEP_SECONDS = "heads.sweep_seconds"
HEADS_SECONDS = "heads.seconds"
HEADS_BEST_NAME = "heads.best.name"
HEADS_BEST_TRIAL = "heads.best.trial"
HEADS_BEST_VAL_ACCURACY = "heads.best.val_accuracy"
HEADS_BEST_TEST_ACCURACY = "heads.best.test_accuracy"


def head_val_accuracy(name: str) -> str:
    """``heads.<name>.val_accuracy``: the validation accuracy of head ``name``'s best trial."""
    return f"heads.{name}.val_accuracy"


FINETUNE_VAL_ACCURACY = "finetune.val_accuracy"
FINETUNE_TEST_ACCURACY = "finetune.test_accuracy"
FINETUNE_SECONDS = "finetune.seconds"
FINETUNE_WARM_START = "finetune.warm_start"

SCRATCH_VAL_ACCURACY = "scratch.val_accuracy"
SCRATCH_TEST_ACCURACY = "scratch.test_accuracy"
SCRATCH_PARAMETERS = "scratch.parameters"
SCRATCH_SECONDS = "scratch.seconds"

#: What a training phase of an end-to-end stage records, each as ``<stage>.<phase>.<measure>``.
PHASE_MEASURES = ("epochs", "seconds", "seconds_per_image", "best_val_accuracy")


def phase_key(stage: str, phase: str, measure: str) -> str:
    """``<stage>.<phase>.<measure>``, e.g. ``finetune.phase1.epochs``."""
    return f"{stage}.{phase}.{measure}"


def base_trainable_params(phase: str) -> str:
    """``finetune.<phase>.base_trainable_params``: the base's trainable parameters in a phase."""
    return phase_key("finetune", phase, "base_trainable_params")


def up_to_date_in(stage: str) -> str:
    """``<stage>.up_to_date_in``: the run folder holding the outputs of a stage that was
    skipped as up to date."""
    return f"{stage}.up_to_date_in"


RUN_FINISHED = "run.finished"

#: Keys renamed in a release: key -> the name metrics.json of earlier runs has it under.
FORMER_NAMES = {
    EXTRACT_AUGMENTED_COPIES_NEW: "extract.augmented_views_new",
    EXTRACT_AUGMENTED_COPIES_CACHED: "extract.augmented_views_cached",
    EXTRACT_AUGMENTED_COPIES_SECONDS: "extract.augmented_views_seconds",
    HEADS_TRAIN_AUGMENTED_COPIES: "heads.train_augmented_views",
}


def read(metrics: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """``metrics[key]``; for a run of an earlier release, the value under the key's former
    name (:data:`FORMER_NAMES`); else ``default``."""
    if key in metrics:
        return metrics[key]
    former = FORMER_NAMES.get(key)
    return metrics[former] if former is not None and former in metrics else default


#: Every key, as docs/reference/outputs.md documents it.
DOCUMENTED = (
    EXTRACT_FINGERPRINT, EXTRACT_IMAGES, EXTRACT_IMAGES_NEW, EXTRACT_IMAGES_CACHED,
    EXTRACT_IMAGES_SKIPPED, EXTRACT_DUPLICATE_GROUPS, EXTRACT_LEAKAGE_GROUPS, EXTRACT_SECONDS,
    EXTRACT_INFERENCE_SECONDS, EXTRACT_IMAGES_PER_SECOND, EXTRACT_AUGMENTED_COPIES_NEW,
    EXTRACT_AUGMENTED_COPIES_CACHED, EXTRACT_AUGMENTED_COPIES_SECONDS,
    PROBE_FEATURES, PROBE_BEST_FEATURE, PROBE_BEST_VAL_ACCURACY, PROBE_SECONDS,
    HEADS_TRIALS, HEADS_TRAIN_IMAGES, HEADS_TRAIN_AUGMENTED_COPIES, HEADS_FAILED_TRIALS,
    HEADS_SWEEP_SECONDS, HEADS_SECONDS, HEADS_BEST_NAME, HEADS_BEST_TRIAL,
    HEADS_BEST_VAL_ACCURACY, HEADS_BEST_TEST_ACCURACY, head_val_accuracy("<name>"),
    FINETUNE_VAL_ACCURACY, FINETUNE_TEST_ACCURACY, FINETUNE_SECONDS, FINETUNE_WARM_START,
    *(phase_key("finetune", "<phase>", m) for m in PHASE_MEASURES),
    base_trainable_params("<phase>"),
    SCRATCH_VAL_ACCURACY, SCRATCH_TEST_ACCURACY, SCRATCH_PARAMETERS, SCRATCH_SECONDS,
    *(phase_key("scratch", "train", m) for m in PHASE_MEASURES),
    up_to_date_in("<stage>"), RUN_FINISHED,
)
