"""stages.yaml parsing: typed values, errors that name the file and key, --set overrides."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from pipeline.config import load_config, parse_config
from pipeline.errors import ConfigError, RenamedKeyWarning
from tests.support.projects import tiny_document, write_config


def test_defaults_and_paths_resolve_relative_to_the_yaml_file(tiny_project: Path,
                                                              monkeypatch, tmp_path_factory):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    config = load_config(tiny_project / "stages.yaml")
    assert config.data.root == tiny_project / "data"
    assert config.cache.dir == tiny_project / "cache"
    assert config.runs.dir == tiny_project / "runs"
    assert config.data.image_size == (32, 32)
    assert config.data.split.train == 0.7 and config.data.split.seed == 0
    assert config.stages.extract.batch_size == 4


def test_default_cache_and_runs_folders_sit_beside_the_yaml(tiny_project: Path, monkeypatch,
                                                            tmp_path_factory):
    document = tiny_document()
    del document["cache"], document["runs"]
    write_config(tiny_project, document)
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    config = load_config(tiny_project / "stages.yaml")
    assert config.cache.dir == tiny_project / ".pipeline" / "cache"
    assert config.runs.dir == tiny_project / "runs"


@pytest.mark.parametrize("change, key, words", [
    ({"data": {"root": "data", "colour": 1}}, "data.colour", "unknown key"),
    ({"stages": {"extract": {"batch_size": "32"}}}, "stages.extract.batch_size", "integer"),
    ({"stages": {"extract": {"batch_size": 0}}}, "stages.extract.batch_size", "greater"),
    ({"data": {"root": "nowhere"}}, "data.root", "folder does not exist"),
    ({"data": {"root": "data", "split": {"train": 0.9, "validation": 0.2, "test": 0.1}}},
     "data.split", "must be 1"),
    ({"data": {"root": "data", "image_size": [16, 16]}}, "data.image_size", "at least 32"),
    ({"data": {"root": "data", "image_size": 150}}, "data.image_size", "tuple"),
    ({"backbone": {"weights": "no/such/file.h5"}}, "backbone.weights", "no such weights file"),
    ({"backbone": {"weights": None, "output_layer": "fc1"}}, "backbone.output_layer", "block5"),
    ({"stages": {"report": {}}}, "stages.report",
     "unknown key (known here: extract, probe, heads, finetune, scratch)"),
    ({"backbone": {"weights": None, "taps": ["block4_conv9.gap"]}}, "backbone.taps",
     "'block4_conv9.gap' is not <layer>.<pool>"),
    ({"backbone": {"weights": None, "taps": ["block4_conv3.avg"]}}, "backbone.taps",
     "a pool of gap, gmp"),
    ({"backbone": {"weights": None, "taps": ["fc1.gap"]}}, "backbone.taps", "VGG16 layer"),
    ({"backbone": {"weights": None, "output_layer": "block4_pool",
                   "taps": ["block5_conv1.gap"]}}, "backbone.taps",
     "block5_conv1 is past output_layer block4_pool"),
    ({"backbone": {"weights": None, "taps": ["block3_conv3.gap", "block3_conv3.gap"]}},
     "backbone.taps", "twice"),
    ({"backbone": {"weights": None, "taps": "block3_conv3.gap"}}, "backbone.taps", "list"),
    ({"backbone": {"weights": None, "keep_output": False}}, "backbone.keep_output",
     "false keeps only the taps, and there are none"),
    ({"stages": {"heads": {"models": {"a": {"kind": "knn", "features": ["gap", "blk.gap"]}}}}},
     "stages.heads.models.a.features", "'blk.gap'"),
    ({"stages": {"heads": {"models": {"a": {"kind": "knn", "features": []}}}}},
     "stages.heads.models.a.features", "or a list of them"),
    ({"stages": {"heads": {"models": {"a": {"kind": "knn", "normalize": "l1"}}}}},
     "stages.heads.models.a.normalize", "'none', 'l2' or 'power'"),
    ({"stages": {"heads": {"models": {"a": {"kind": "knn", "sweep": {"params": {
        "features": ["gap", ["gap", "no_such.gmp"]]}}}}}}},
     "stages.heads.models.a.sweep", "features: ['gap', 'no_such.gmp']: 'no_such.gmp' is not"),
    ({"stages": {"probe": {"C": [1.0, 0.0]}}}, "stages.probe.C", "every C must be > 0"),
    ({"cache": {"lock_timeout": "soon"}}, "cache.lock_timeout", "number"),
    ({"backbone": {"weights": None, "flip_average": "yes"}}, "backbone.flip_average",
     "boolean"),
])
def test_bad_values_fail_naming_file_and_key(tiny_project: Path, change, key, words):
    document = tiny_document()
    for section, value in change.items():
        document[section] = value
    path = write_config(tiny_project, document)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith("stages.yaml: ")
    assert f" {key}: " in message
    assert words in message


def test_missing_data_section_is_named(tmp_path: Path):
    path = write_config(tmp_path, {"backbone": {"weights": None}})
    with pytest.raises(ConfigError, match=r"stages.yaml: data: required key is missing"):
        load_config(path)


def test_not_yaml_and_not_a_mapping(tmp_path: Path):
    path = tmp_path / "stages.yaml"
    path.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.yaml")


def test_set_overrides_any_key_with_yaml_values(tiny_project: Path):
    config = load_config(tiny_project / "stages.yaml", [
        "data.image_size=[64,48]", "backbone.weights=null", "stages.extract.batch_size=7",
        "data.split.seed=3", "cache.dir=elsewhere", "backbone.flip_average=true"])
    assert config.data.image_size == (64, 48)
    assert config.backbone.flip_average is True
    assert load_config(tiny_project / "stages.yaml").backbone.flip_average is False
    assert config.backbone.weights is None
    assert config.stages.extract.batch_size == 7
    assert config.data.split.seed == 3
    assert config.cache.dir == tiny_project / "elsewhere"


def test_set_errors_are_validated_like_the_file(tiny_project: Path):
    with pytest.raises(ConfigError, match=r"^--set data.rooot \(command line\): unknown key; "
                                          r"did you mean root\?"):
        load_config(tiny_project / "stages.yaml", ["data.rooot=x"])
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(tiny_project / "stages.yaml", ["data.root"])
    with pytest.raises(ConfigError, match="data.root is not a section"):
        load_config(tiny_project / "stages.yaml", ["data.root.x=1"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tiny_project / "stages.yaml", ["data.image_size=[1,"])


def test_weights_keywords_and_existing_file(tiny_project: Path):
    weights = tiny_project / "my.weights.h5"
    weights.write_bytes(b"x")
    for value, expected in [("imagenet", "imagenet"), ("hed-bsds500", "hed-bsds500"),
                            ("my.weights.h5", str(weights)), (None, None)]:
        document = tiny_document()
        document["backbone"]["weights"] = value
        config = parse_config(document, source=tiny_project / "stages.yaml")
        assert config.backbone.weights == expected


def test_config_is_immutable(tiny_project: Path):
    config = load_config(tiny_project / "stages.yaml")
    from pydantic import ValidationError
    with pytest.raises(ValidationError, match="frozen"):
        config.data.image_size = (64, 64)


# Renamed keys: the old name (stages.*.augmented_views until this release) still loads.
OLD_AUGMENTED = {"count": 2, "seed": 5, "augmentation": {"horizontal_flip": True}}


@pytest.mark.parametrize("section, old_value", [("extract", OLD_AUGMENTED),
                                                ("heads", False)])
def test_an_old_key_name_loads_as_the_new_one_with_a_warning(tiny_project: Path, section,
                                                              old_value):
    document = tiny_document()
    document["stages"].setdefault(section, {})["augmented_views"] = old_value
    path = write_config(tiny_project, document)
    with pytest.warns(RenamedKeyWarning) as caught:
        config = load_config(path)
    assert [str(w.message) for w in caught if w.category is RenamedKeyWarning] == [
        f"stages.yaml: stages.{section}.augmented_views is now "
        f"stages.{section}.augmented_copies; rename it (the old name will stop working in a "
        f"later release)"]
    document["stages"][section]["augmented_copies"] = \
        document["stages"][section].pop("augmented_views")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RenamedKeyWarning)
        renamed = load_config(write_config(tiny_project, document))
    assert getattr(config.stages, section) == getattr(renamed.stages, section)
    if section == "extract":
        assert config.stages.extract.augmented_copies.count == 2
        assert config.stages.extract.augmented_copies.seed == 5
    else:
        assert config.stages.heads.augmented_copies is False


def test_the_old_and_the_new_key_name_together_are_an_error(tiny_project: Path):
    document = tiny_document(augmented_views={"count": 1}, augmented_copies={"count": 2})
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tiny_project, document))
    assert str(info.value).startswith("stages.yaml: stages.extract.augmented_views and "
                                      "stages.extract.augmented_copies are both given")
    document = {**tiny_document(), "stages": {"heads": {"augmented_views": False,
                                                        "augmented_copies": True}}}
    with pytest.raises(ConfigError, match="stages.heads.augmented_views and "
                                          "stages.heads.augmented_copies"):
        parse_config(document, source=tiny_project / "stages.yaml")


def test_set_of_an_old_key_name_sets_the_new_one_with_a_warning(tiny_project: Path):
    path = write_config(tiny_project, tiny_document(augmented_copies={"seed": 3}))
    with pytest.warns(RenamedKeyWarning, match=r"^--set stages.extract.augmented_views.count: "
                                               r"stages.extract.augmented_views is now "
                                               r"stages.extract.augmented_copies; rename it"):
        config = load_config(path, ["stages.extract.augmented_views.count=2"])
    assert config.stages.extract.augmented_copies.count == 2
    assert config.stages.extract.augmented_copies.seed == 3  # the file's section, completed
    with pytest.warns(RenamedKeyWarning):
        config = load_config(path, ["stages.heads.augmented_views=false"])
    assert config.stages.heads.augmented_copies is False
    # a file with the old name, a --set with the new one: the file's section, completed
    path = write_config(tiny_project, tiny_document(augmented_views={"seed": 3}))
    with pytest.warns(RenamedKeyWarning, match="^stages.yaml: stages.extract.augmented_views"):
        config = load_config(path, ["stages.extract.augmented_copies.count=2"])
    assert config.stages.extract.augmented_copies.count == 2
    assert config.stages.extract.augmented_copies.seed == 3


def test_the_new_key_names_load_without_a_warning(tiny_project: Path):
    path = write_config(tiny_project, tiny_document(augmented_copies={"count": 1}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = load_config(path, ["stages.heads.augmented_copies=false"])
    assert config.stages.extract.augmented_copies.count == 1
    assert config.stages.heads.augmented_copies is False
