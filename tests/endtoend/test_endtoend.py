"""The end-to-end stages (finetune, scratch) and cached augmented copies, at 32x32 with random
weights and one epoch per phase: the numbers are meaningless, the mechanics exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.data.view import view_id
from pipeline.errors import ConfigError
from tests.support.projects import run_named
from tests.support.projects import split_project as _split_project


def _run(project: Path, *stages: str, overrides: tuple[str, ...] = ()):
    config = load_config(project / "stages.yaml", overrides)
    return run_named(config, *stages)[0]


def _conv_weights(model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [np.array(w) for w in layer.get_weights()]
            for layer in model.layers if "_conv" in layer.name}


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """extract + heads, then finetune: the project, both run folders and the start weights."""
    from pipeline.backbone import backbone_spec
    from pipeline.backbone.model import build_vgg16_base

    project = _split_project(tmp_path_factory.mktemp("finetune"))
    heads_run = _run(project, "extract", "heads")
    config = load_config(project / "stages.yaml")
    start = _conv_weights(build_vgg16_base(backbone_spec(config)))
    finetune_run = _run(project, "finetune")
    return project, heads_run, finetune_run, start


def test_phase1_changes_no_base_weight_and_phase2_only_block5(finetuned):
    from pipeline.endtoend.finetune import base_of
    from pipeline.nn.runtime import keras

    _, _, run, start = finetuned
    folder = run.path / "finetune"
    after_phase1 = keras.saving.load_model(folder / "best_phase1.keras", safe_mode=True)
    final = keras.saving.load_model(folder / "model.keras", safe_mode=True)
    for name, weights in _conv_weights(base_of(after_phase1)).items():
        for now, before in zip(weights, start[name]):
            np.testing.assert_array_equal(now, before, err_msg=f"{name} moved in phase 1")
    for name, weights in _conv_weights(base_of(final)).items():
        moved = any(not np.array_equal(now, before) for now, before in zip(weights, start[name]))
        assert moved == name.startswith("block5"), name


def test_finetune_reports_the_layer_counts_and_scores_on_test(finetuned):
    _, heads_run, run, _ = finetuned
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["finetune.warm_start"] == str(heads_run.path / "heads" / "dense")
    assert metrics["finetune.phase1.base_trainable_params"] == 0
    # block5_conv1..3 of VGG16: 3 x (3*3*512*512 + 512), whatever the input size
    assert metrics["finetune.phase2.base_trainable_params"] == 7_079_424
    assert metrics["finetune.phase1.epochs"] == metrics["finetune.phase2.epochs"] == 1
    assert 0 <= metrics["finetune.test_accuracy"] <= 1
    folder = run.path / "finetune"
    for name in ("model.keras", "evaluation.json", "confusion_test.png", "layers_phase1.txt",
                 "layers_phase2.txt", "history_phase1.csv", "history_phase2.json"):
        assert (folder / name).is_file(), name
    assert any((folder / "logs" / "phase1").rglob("*tfevents*"))  # TensorBoard
    table = (folder / "layers_phase2.txt").read_text()
    assert "block5_conv1" in table and "trainable" in table
    scores = json.loads((folder / "evaluation.json").read_text())
    assert scores["test"]["images"] == 4


def test_the_head_starts_from_the_cached_dense_head(finetuned):
    from pipeline.endtoend.finetune import build_finetune_model, find_warm_start
    from pipeline.heads.saving import load_head

    project, heads_run, _, _ = finetuned
    config = load_config(project / "stages.yaml")
    from pipeline.endtoend.training import trainable_view
    ctx = RunContext(config)
    fingerprint, view = ctx.fingerprint.id, trainable_view(ctx)
    # the finetune run saved no head, so the heads run's dense head is still the newest
    found = find_warm_start(config.stages.finetune, config.runs.dir, fingerprint, view.classes,
                            view_id(config))
    assert found == heads_run.path / "heads" / "dense"
    model = build_finetune_model(RunContext(config), 2, found)
    cached = load_head(found)[0].model.get_weights()
    head = model.layers[-1]
    assert len(head.get_weights()) == len(cached)
    for ours, theirs in zip(head.get_weights(), cached):
        np.testing.assert_array_equal(ours, theirs)


def test_the_base_in_the_model_computes_the_cached_features(finetuned):

    from cache import FeatureStore
    from pipeline.data.decode import decode_file
    from pipeline.endtoend.finetune import build_finetune_model
    from pipeline.endtoend.training import trainable_view

    project, _, _, _ = finetuned
    config = load_config(project / "stages.yaml")
    ctx = RunContext(config)
    spec, fingerprint, view = ctx.spec, ctx.fingerprint.id, trainable_view(ctx)
    model = build_finetune_model(RunContext(config), 2, None)
    image = view.select("validation")[0]
    pixels = decode_file(Path(view.root) / image.path, spec.decode)[None].astype(np.float32)
    # through the model's own graph: augmentation (identity at inference), preprocessing, base
    from pipeline.nn.runtime import keras
    to_features = keras.Model(model.input, model.get_layer("base_features").output)
    features = np.asarray(to_features(pixels, training=False))
    cached = FeatureStore(config.cache.dir, fingerprint).get([image.sha256])
    np.testing.assert_allclose(features, cached, rtol=1e-5, atol=1e-5)


def test_a_phase_of_zero_epochs_is_skipped_and_the_other_still_trains(tmp_path: Path):
    project = _split_project(tmp_path)
    _run(project, "extract")
    run = _run(project, "finetune", overrides=("stages.finetune.frozen_epochs=0",
                                               "stages.finetune.head_from=null"))
    metrics = json.loads((run.path / "metrics.json").read_text())  # valid JSON: no NaN
    assert metrics["finetune.phase1.epochs"] == 0
    assert "finetune.phase1.best_val_accuracy" not in metrics
    assert metrics["finetune.phase2.epochs"] == 1
    assert metrics["finetune.warm_start"] == ""
    assert "phase1: skipped (0 epochs)" in (run.path / "summary.txt").read_text()


def test_unfreezing_past_the_cut_is_refused_before_any_work(tmp_path: Path):

    project = _split_project(tmp_path)
    config = load_config(project / "stages.yaml", ["backbone.output_layer=block4_pool"])
    with pytest.raises(ConfigError, match="base ends at block4_pool"):
        run_named(config, "extract", "finetune")
    assert not (project / "runs").exists() and not (project / "cache").exists()
    no_conv = load_config(project / "stages.yaml", ["stages.finetune.unfreeze=[block5_pool]"])
    with pytest.raises(ConfigError, match="selects no convolution layer"):
        run_named(no_conv, "finetune")


def test_a_head_of_another_split_is_never_the_warm_start(finetuned):
    from pipeline.endtoend.finetune import find_warm_start
    from pipeline.endtoend.training import trainable_view
    from pipeline.errors import WarmStartError

    project, heads_run, _, _ = finetuned
    config = load_config(project / "stages.yaml")
    ctx = RunContext(config)
    fingerprint, view = ctx.fingerprint.id, trainable_view(ctx)
    params = config.stages.finetune
    # auto passes over it; named explicitly it is refused with the reason
    assert find_warm_start(params, config.runs.dir, fingerprint, view.classes, "other") is None
    explicit = load_config(project / "stages.yaml", [
        f"stages.finetune.head_from={heads_run.path / 'heads' / 'dense'}"])
    with pytest.raises(WarmStartError, match="another dataset view"):
        find_warm_start(explicit.stages.finetune, config.runs.dir, fingerprint, view.classes,
                        "other")


def test_no_head_warm_starts_a_base_that_does_not_flip_average(finetuned):
    # heads of a flip-averaged cache learned (f(x) + f(mirror x)) / 2, which the model
    # through the base never computes: auto starts a new head, a named one is refused
    from pipeline.endtoend.finetune import find_warm_start
    from pipeline.endtoend.training import trainable_view
    from pipeline.errors import WarmStartError

    project, heads_run, _, _ = finetuned
    config = load_config(project / "stages.yaml")
    ctx = RunContext(config)
    fingerprint, view = ctx.fingerprint.id, trainable_view(ctx)
    arguments = (config.runs.dir, fingerprint, view.classes, ctx.view_id)
    assert find_warm_start(config.stages.finetune, *arguments) is not None  # the heads' dense
    assert find_warm_start(config.stages.finetune, *arguments, flip_average=True) is None
    explicit = load_config(project / "stages.yaml", [
        f"stages.finetune.head_from={heads_run.path / 'heads' / 'dense'}"])
    with pytest.raises(WarmStartError, match="flip-averaged"):
        find_warm_start(explicit.stages.finetune, *arguments, flip_average=True)


def test_an_empty_test_split_trains_warns_and_reports_no_test_score(tmp_path: Path):
    import shutil

    from pipeline.errors import NoTestImagesWarning

    project = _split_project(tmp_path)
    shutil.rmtree(project / "data" / "test")
    _run(project, "extract")
    with pytest.warns(NoTestImagesWarning):
        run = _run(project, "scratch")
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert "scratch.test_accuracy" not in metrics and "scratch.val_accuracy" in metrics
    assert "test accuracy - (0 test images)" in (run.path / "summary.txt").read_text()


@pytest.mark.parametrize("stage", ["finetune", "scratch"])
def test_end_to_end_stages_without_extract_say_to_extract(tmp_path: Path, stage: str):
    from pipeline.errors import MissingViewError

    project = _split_project(tmp_path)
    with pytest.raises(MissingViewError, match="run `pipeline run extract` first"):
        _run(project, stage)


def test_a_head_for_other_classes_or_features_is_refused(finetuned):
    from pipeline.endtoend.finetune import find_warm_start
    from pipeline.endtoend.training import trainable_view
    from pipeline.errors import WarmStartError

    project, heads_run, _, _ = finetuned
    config = load_config(project / "stages.yaml", [
        f"stages.finetune.head_from={heads_run.path / 'heads' / 'dense'}"])
    ctx = RunContext(config)
    fingerprint, view = ctx.fingerprint.id, trainable_view(ctx)
    assert find_warm_start(config.stages.finetune, config.runs.dir, fingerprint,
                           view.classes, view_id(config)) == heads_run.path / "heads" / "dense"
    with pytest.raises(WarmStartError, match="classes"):
        find_warm_start(config.stages.finetune, config.runs.dir, fingerprint, ["a", "b"],
                        view_id(config))
    with pytest.raises(WarmStartError, match="backbone"):
        find_warm_start(config.stages.finetune, config.runs.dir, "vgg16-other", view.classes,
                        view_id(config))
    none = load_config(project / "stages.yaml", ["stages.finetune.head_from=null"])
    assert find_warm_start(none.stages.finetune, none.runs.dir, "fp", ["a", "b"], "v") is None


@pytest.mark.parametrize("unfreeze, layers", [
    ("[block5]", ["block5_conv1", "block5_conv2", "block5_conv3"]),
    ("15", ["block5_conv1", "block5_conv2", "block5_conv3"]),
    ("13", ["block4_conv3", "block5_conv1", "block5_conv2", "block5_conv3"]),
    ("[block4_conv3, block5_conv3]", ["block4_conv3", "block5_conv3"]),
])
def test_unfreeze_by_block_name_layer_name_or_index(tmp_path: Path, unfreeze: str, layers):
    project = _split_project(tmp_path)
    config = load_config(project / "stages.yaml", [f"stages.finetune.unfreeze={unfreeze}"])
    assert config.stages.finetune.unfrozen_layers() == layers


@pytest.mark.parametrize("override, message", [
    ("stages.finetune.unfreeze=[block6]", "unknown VGG16 layer or block block6"),
    ("stages.finetune.unfreeze=0", "index must be 1..18"),
    ("stages.finetune.head_from=nowhere", "no head.json"),
    ("stages.finetune.augmentation.rotation=400", "rotation"),
    ("stages.scratch.filters=[]", "filters"),
    ("stages.extract.augmented_copies={count: 2, augmentation: {horizontal_flip: false, "
     "rotation: 0, width_shift: 0, height_shift: 0, shear: 0, zoom: 0}}",
     "at least one transform"),
])
def test_bad_end_to_end_settings_name_the_key(tmp_path: Path, override: str, message: str):
    project = _split_project(tmp_path)
    with pytest.raises(ConfigError, match=message):
        load_config(project / "stages.yaml", [override])


def test_scratch_trains_the_source_cnn_and_saves_a_model_that_reloads(tmp_path: Path):
    from pipeline.endtoend.training import ImageBatches, image_split, predict_split, trainable_view
    from pipeline.nn.runtime import keras

    project = _split_project(tmp_path)
    _run(project, "extract")
    run = _run(project, "scratch")
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["scratch.train.epochs"] == 1
    assert 0 <= metrics["scratch.test_accuracy"] <= 1
    model = keras.saving.load_model(run.path / "scratch" / "model.keras", safe_mode=True)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") == kinds.count("MaxPooling2D") == 3
    assert kinds[1] == "Rescaling" and kinds.count("Dense") == 2
    # the one rule of every classifier here: two classes, one sigmoid unit
    assert model.layers[-1].activation.__name__ == "sigmoid" and model.output_shape == (None, 1)
    config = load_config(project / "stages.yaml")
    ctx = RunContext(config)
    spec, view = ctx.spec, trainable_view(ctx)
    proba, labels = predict_split(model, ImageBatches(image_split(view, "test"), spec.decode, 4))
    scores = json.loads((run.path / "scratch" / "evaluation.json").read_text())
    assert np.mean(proba.argmax(axis=1) == labels) == pytest.approx(scores["test"]["accuracy"])


def _centre(image: np.ndarray) -> tuple[float, float]:
    weights = image.sum(axis=2)
    rows, cols = np.indices(weights.shape)
    return (rows * weights).sum() / weights.sum(), (cols * weights).sum() / weights.sum()


def test_each_transform_of_a_copy_draws_its_own_numbers():
    from pipeline.config import AugmentConfig
    from pipeline.nn.augment import augment_image, build_augmentation

    off = {"horizontal_flip": False, "rotation": 0, "width_shift": 0, "height_shift": 0,
           "shear": 0, "zoom": 0}
    dot = np.zeros((41, 41, 3), np.float32)
    dot[20, 20] = 255.0
    shift = build_augmentation(AugmentConfig(**{**off, "width_shift": 0.2,
                                                "height_shift": 0.2}))
    moves = [np.subtract(_centre(augment_image(shift, dot, seed)), (20, 20))
             for seed in range(8)]
    # one draw reused for both axes would move the dot along the diagonal only
    assert any(abs(abs(dy) - abs(dx)) > 1 for dy, dx in moves)
    line = np.zeros((41, 41, 3), np.float32)
    line[:, 20] = 255.0
    shear = build_augmentation(AugmentConfig(**{**off, "shear": 0.5}))
    tilts = []
    for seed in range(12):
        sheared = augment_image(shear, line, seed)
        tilts.append(_centre(sheared[:10])[1] - _centre(sheared[-10:])[1])
    assert min(tilts) < -1 and max(tilts) > 1  # sheared both ways


def test_augmented_copies_are_deterministic_for_a_seed_and_differ_across_copies():
    from pipeline.config import AugmentConfig
    from pipeline.nn.augment import augment_image, build_augmentation

    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3)).astype(np.float32)
    augmentation = build_augmentation(AugmentConfig())
    first = augment_image(augmentation, image, seed=11)
    np.testing.assert_array_equal(first, augment_image(build_augmentation(AugmentConfig()),
                                                       image, seed=11))
    assert not np.allclose(first, augment_image(augmentation, image, seed=12))
    assert not np.allclose(first, image)
    assert first.shape == image.shape and first.min() >= 0 and first.max() <= 255
    assert build_augmentation(AugmentConfig(horizontal_flip=False, rotation=0, width_shift=0,
                                            height_shift=0, shear=0, zoom=0)) is None


def test_extract_caches_augmented_copies_that_heads_train_on(tmp_path: Path):
    from cache import FeatureStore
    from pipeline.endtoend.training import trainable_view

    copies = "stages.extract.augmented_copies.count=2"
    one = _split_project(tmp_path / "one")
    run = _run(one, "extract", "heads", overrides=(copies,))
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["extract.augmented_copies_new"] == 16  # 8 training images x 2
    assert metrics["heads.train_augmented_copies"] == 16
    assert metrics["heads.train_images"] == 8
    again = json.loads((_run(one, "extract", overrides=(copies,)).path /
                        "metrics.json").read_text())
    assert again["extract.augmented_copies_new"] == 0
    assert again["extract.augmented_copies_cached"] == 16

    config = load_config(one / "stages.yaml", [copies])
    ctx = RunContext(config)
    fingerprint, view = ctx.fingerprint.id, trainable_view(ctx)
    from pipeline.cache_commands import collect_garbage
    assert collect_garbage(config.cache.dir)[0].unreferenced == []  # gc keeps the copies
    keys = [key for key, _, _ in view.augmented_copies()]
    assert len(set(keys)) == 16 and not set(keys) & {i.sha256 for i in view.images}
    features = FeatureStore(config.cache.dir, fingerprint).get(keys)
    image_zero = [k for k, image, _ in view.augmented_copies()
                  if image == view.select("train")[0]]
    first, second = FeatureStore(config.cache.dir, fingerprint).get(image_zero)
    assert not np.allclose(first, second)  # two copies of one image differ

    # the same copies computed from scratch elsewhere are the same numbers
    two = _split_project(tmp_path / "two")
    _run(two, "extract", overrides=(copies,))
    config_two = load_config(two / "stages.yaml", [copies])
    view_two = trainable_view(RunContext(config_two))
    assert [k for k, _, _ in view_two.augmented_copies()] == keys
    np.testing.assert_allclose(FeatureStore(config_two.cache.dir, fingerprint).get(keys),
                               features, rtol=1e-5, atol=1e-5)

    # other transforms are other copies; heads can leave the copies out
    shifted = load_config(one / "stages.yaml", [
        copies, "stages.extract.augmented_copies.augmentation.zoom=0.1"])
    from pipeline.extract.augmented import augmentation_id
    assert augmentation_id(shifted.stages.extract.augmented_copies) != \
        augmentation_id(config.stages.extract.augmented_copies)
    plain = _run(one, "heads", overrides=(copies, "stages.heads.augmented_copies=false"))
    assert json.loads((plain.path / "metrics.json").read_text())[
        "heads.train_augmented_copies"] == 0

    # a dataset view that names copies the cache lacks is refused with the way out
    from dataclasses import replace

    from pipeline.data.view import read_view, write_view
    from pipeline.errors import PipelineError
    view_file = RunContext(config).view_file
    damaged = read_view(view_file)
    damaged.augmented = replace(damaged.augmented, count=3)
    write_view(damaged, view_file)
    with pytest.raises(PipelineError, match="8 of 24 augmented copies"):
        _run(one, "heads", overrides=(copies,))
    _run(one, "heads", overrides=(copies, "stages.heads.augmented_copies=false"))


def _an_older_and_a_newer_head(finetuned, tmp_path: Path):
    """Two copies of the fixture's dense head in two run folders under ``tmp_path/runs``, the
    second newer: (config, fingerprint, trainable view, older folder, newer folder)."""
    import shutil

    from pipeline.endtoend.training import trainable_view

    project, heads_run, _, _ = finetuned
    config = load_config(project / "stages.yaml")
    ctx = RunContext(config)
    older = tmp_path / "runs" / "20200101-000000-heads-aaaa" / "heads" / "dense"
    newer = tmp_path / "runs" / "20990101-000000-heads-bbbb" / "heads" / "dense"
    for folder in (older, newer):
        shutil.copytree(heads_run.path / "heads" / "dense", folder)
    return config, ctx.fingerprint.id, trainable_view(ctx), older, newer


def test_auto_passes_over_a_newer_head_that_does_not_load(finetuned, tmp_path: Path):

    from pipeline.endtoend.finetune import find_warm_start

    config, fingerprint, view, good, broken = _an_older_and_a_newer_head(finetuned, tmp_path)
    (broken / "model.keras").unlink()
    assert find_warm_start(config.stages.finetune, tmp_path / "runs", fingerprint,
                           view.classes, view_id(config)) == good


def test_training_images_gone_since_extract_stop_the_run_with_a_clear_error(tmp_path: Path):
    import shutil

    from pipeline.errors import PipelineError

    project = _split_project(tmp_path)
    _run(project, "extract")
    shutil.rmtree(project / "data" / "train")
    with pytest.raises(PipelineError, match="decodes any more"):
        _run(project, "scratch")


def test_training_reads_each_epoch_through_one_batch_reader(tmp_path: Path, monkeypatch):
    # fit reads the batches in order (it must not shuffle them itself: the batches shuffle
    # their rows), so the batch reader decodes ahead instead of starting again per batch
    from pipeline.data import batches

    readers = []
    real_init = batches.BatchReader.__init__

    def counted(self, *args, **kwargs):
        readers.append(len(kwargs["paths"]))
        real_init(self, *args, **kwargs)

    project = _split_project(tmp_path, scratch={"epochs": 3, "batch_size": 2,
                                                 "patience": None})
    _run(project, "extract")
    monkeypatch.setattr(batches.BatchReader, "__init__", counted)
    _run(project, "scratch")
    # train: 8 images in 4 batches, validation and test: 4 in 2. One reader per epoch per
    # split (and one more of each for Keras' look at the first batches), never one per batch.
    full_passes = [n for n in readers if n in (8, 4)]
    assert len(readers) == len(full_passes) <= 3 * 2 + 2 + 2 + 2, readers


def test_auto_passes_over_a_dense_head_on_taps_and_a_named_one_is_refused(finetuned,
                                                                        tmp_path: Path):
    from pipeline.endtoend.finetune import find_warm_start
    from pipeline.errors import WarmStartError

    config, fingerprint, view, good, on_taps = _an_older_and_a_newer_head(finetuned, tmp_path)
    project = finetuned[0]
    # the newer head read a tap beside the output tensor, as head.json records it
    metadata = json.loads((on_taps / "head.json").read_text())
    metadata["sources"] = {"output": fingerprint, "block4_conv3.gap": "vgg16-0123456789abcdef"}
    (on_taps / "head.json").write_text(json.dumps(metadata))
    assert find_warm_start(config.stages.finetune, tmp_path / "runs", fingerprint,
                           view.classes, view_id(config)) == good
    named = load_config(project / "stages.yaml", [f"stages.finetune.head_from={on_taps}"])
    with pytest.raises(WarmStartError, match=r"a head on taps \(block4_conv3.gap\); only a "
                                             r"dense head on the output tensor alone"):
        find_warm_start(named.stages.finetune, tmp_path / "runs", fingerprint, view.classes,
                        view_id(config))


def test_augmented_copies_get_taps_too_and_a_tap_added_later_sees_the_same_copies(
        tmp_path: Path):
    from pipeline.endtoend.training import trainable_view

    copies = "stages.extract.augmented_copies.count=1"
    taps = "backbone.taps=[block2_pool.gap, block3_conv1.gmp]"
    heads = 'stages.heads.models={lr: {kind: logistic_regression, features: ' \
            '[block2_pool.gap, block3_conv1.gmp], normalize: power}}'
    one = _split_project(tmp_path / "one")
    run = _run(one, "extract", "heads", overrides=(copies, taps, heads))
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["extract.augmented_copies_new"] == 8
    assert metrics["heads.train_augmented_copies"] == 8  # the head on taps trained on them
    ctx = RunContext(load_config(one / "stages.yaml", [copies, taps]))
    keys = [key for key, _, _ in trainable_view(ctx).augmented_copies()]
    for store in ctx.stores.values():
        assert store.missing(keys) == []

    # elsewhere: the copies first without taps, then the taps added: the same numbers
    two = _split_project(tmp_path / "two")
    _run(two, "extract", overrides=(copies,))
    output = RunContext(load_config(two / "stages.yaml", [copies])).store
    before = output.get(keys)
    _run(two, "extract", overrides=(copies, taps))
    later = RunContext(load_config(two / "stages.yaml", [copies, taps]))
    output.refresh()
    np.testing.assert_array_equal(output.get(keys), before)
    for tap in ("block2_pool.gap", "block3_conv1.gmp"):
        np.testing.assert_allclose(later.stores[tap].get(keys), ctx.stores[tap].get(keys),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_finetune_trains_a_base_that_computes_in_16_bits(tmp_path: Path, precision: str):
    from pipeline.endtoend.finetune import phase_optimizer
    from pipeline.nn.runtime import keras

    project = _split_project(tmp_path)
    overrides = (f"backbone.precision={precision}", "stages.finetune.head_from=null")
    _run(project, "extract", overrides=overrides)
    run = _run(project, "finetune", overrides=overrides)
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["finetune.phase2.epochs"] == 1 and "finetune.val_accuracy" in metrics
    history = json.loads((run.path / "finetune" / "history_phase2.json").read_text())
    assert np.isfinite(history["loss"]).all()
    scaled = isinstance(phase_optimizer("rmsprop", 1e-5, precision),
                        keras.optimizers.LossScaleOptimizer)
    assert scaled == (precision == "float16")
