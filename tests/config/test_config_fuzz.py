"""Property-based tests of the configuration boundary: whatever YAML document or ``--set``
value arrives, the result is a valid config or a :class:`ConfigError` (one ``error:`` line at the
CLI), never another exception."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import PipelineConfig, load_config, parse_config
from pipeline.errors import ConfigError

# Keys the config knows, so that random documents reach deep validation, not only the
# "unknown key" check at the top.
KEYS = ["data", "root", "split", "train", "validation", "test", "seed", "image_size",
        "interpolation", "exif_transpose", "max_pixels", "backbone", "weights", "output_layer",
        "cache", "dir", "lock_timeout", "stages", "extract", "batch_size", "shard_size",
        "flush_seconds", "decode_workers", "augmented_copies", "count", "augmentation",
        "heads", "models", "kind", "features", "scale", "pca", "params", "sweep", "method",
        "n_trials", "incremental", "chunk_rows", "epochs", "metric", "finetune", "head_from",
        "unfreeze", "frozen_epochs", "finetune_epochs", "rotation", "zoom", "fill_mode",
        "scratch", "filters", "runs", "cluster", "scheduler", "workers", "dense", "logreg",
        "augmented_views"]  # the former name of augmented_copies: renamed, or an error

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["data", "imagenet", "hed-bsds500", "dense", "gap", "auto", "block5",
                     "grid", "random", "synchronous", "local", "constant", "~nobody/x", ""]))
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), children,
                        max_size=5)),
    max_leaves=25)
# Where random values go: every section and some of their keys, so that most documents get
# past the top level and exercise the validators inside.
PATHS = ["data", "data.root", "data.split", "data.split.train", "data.image_size",
         "data.max_pixels", "data.interpolation", "backbone", "backbone.weights",
         "backbone.output_layer", "cache", "cache.dir", "cache.lock_timeout", "stages",
         "stages.extract", "stages.extract.batch_size", "stages.extract.augmented_copies",
         "stages.extract.augmented_copies.augmentation", "stages.heads", "stages.heads.models",
         "stages.heads.models.h", "stages.heads.models.h.kind", "stages.heads.models.h.params",
         "stages.heads.models.h.sweep", "stages.heads.models.h.sweep.params",
         "stages.heads.models.h.incremental", "stages.heads.models.h.pca",
         "stages.heads.metric", "stages.finetune", "stages.finetune.unfreeze",
         "stages.finetune.head_from", "stages.finetune.augmentation", "stages.scratch",
         "stages.scratch.filters", "runs", "runs.dir", "cluster", "cluster.scheduler",
         "cluster.workers"]


def _place(changes: list[tuple[str, object]]) -> dict:
    """A valid minimal document with each (dotted path, value) written into it."""
    document: dict = {"data": {"root": "data"},
                      "stages": {"heads": {"models": {"h": {"kind": "dense"}}}}}
    for path, value in changes:
        node = document
        *parents, last = path.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    return document


documents = st.lists(st.tuples(st.sampled_from(PATHS), values), max_size=4).map(_place)

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _valid_or_config_error(call) -> None:
    """``call()`` returns a config that also passes the checks run before any work (head
    parameters against their estimators, finetune against the backbone), or one of those
    raises ConfigError; any other exception fails the test."""
    from pipeline.endtoend.stages import check_finetune
    from pipeline.heads.registry import check_heads

    try:
        result = call()
        assert isinstance(result, PipelineConfig)
        check_heads(result.stages.heads)
        check_finetune(result)
    except ConfigError as exc:
        assert str(exc).strip(), "an empty error message"


@FUZZ
@given(document=st.one_of(documents, values))
def test_any_document_is_a_config_or_a_config_error(tmp_path: Path, document):
    (tmp_path / "data").mkdir(exist_ok=True)
    _valid_or_config_error(lambda: parse_config(document, tmp_path / "stages.yaml",
                                                base_dir=tmp_path))


@FUZZ
@given(document=documents)
def test_any_document_written_as_yaml_loads_or_fails_cleanly(tmp_path: Path, document):
    (tmp_path / "data").mkdir(exist_ok=True)
    path = tmp_path / "stages.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    _valid_or_config_error(lambda: load_config(path))


@FUZZ
@given(key=st.lists(st.one_of(st.sampled_from(KEYS), st.text(max_size=5)), min_size=0,
                    max_size=4).map(".".join),
       value=st.one_of(st.text(max_size=30), values.map(lambda v: yaml.safe_dump(v))))
def test_any_set_override_is_a_config_or_a_config_error(tmp_path: Path, key: str, value: str):
    (tmp_path / "data").mkdir(exist_ok=True)
    path = tmp_path / "stages.yaml"
    path.write_text("data: {root: data}\n", encoding="utf-8")
    _valid_or_config_error(lambda: load_config(path, [f"{key}={value}"]))
