"""The dense head kind: the source material's Keras head on cached features.

``features -> feature view (Flatten | GlobalAveragePooling2D | GlobalMaxPooling2D) -> Dense
units relu -> Dropout -> Dense`` with the output of :class:`~pipeline.nn.outputs.ClassifierOutput`
(one sigmoid unit for two classes, else softmax). On the output tensor alone it takes (N, h, w,
c) features, so the finetune stage can put it on top of the conv base; on taps, one input per
source, each part viewed and normalised as :mod:`~pipeline.heads.features` does, concatenated.
It trains in its own loop (:mod:`~pipeline.heads._dense_training`) on logits with the fused
RMSprop, then gets its probability output back and is compiled with Keras' own classes only
(it is pickled and saved).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..config import OUTPUT, DenseParams, HeadConfig
from ..config.heads import FEATURE_VIEWS, feature_parts
from ..errors import ConfigError
from ..nn.loading import (
    keras_model_bytes,
    keras_model_from_bytes,
    load_keras_model,
    save_keras_model,
)
from ..nn.outputs import ClassifierOutput, class_probabilities
from .features import Features, FeatureView, as_features, source_of, sources_of
from .kind import FittedHead, HeadKind

if TYPE_CHECKING:
    from .splits import LabelledSplit
    from .trials import TrialSpec

_POOLS = {"flatten": "Flatten", "gap": "GlobalAveragePooling2D", "gmp": "GlobalMaxPooling2D"}


def input_name(source: str) -> str:
    """The Keras input a source feeds: ``features`` for the output tensor alone (as dense
    heads always were), the source's name with ``_`` for ``.`` otherwise."""
    return source.replace(".", "_")


def model_inputs(model, x: Features | np.ndarray):
    """``x`` as ``model`` takes it: one array for a single input, else a dict by input name."""
    x = as_features(x)
    names = [tensor.name.split(":")[0] for tensor in model.inputs]
    if len(names) == 1:
        return next(iter(x.values())) if len(x) == 1 else x[_source_named(names[0], x)]
    return {name: x[_source_named(name, x)] for name in names}


def _source_named(name: str, x: Features) -> str:
    if name == "features":
        return OUTPUT
    return next(source for source in x if input_name(source) == name)


def dense_model(params: DenseParams, features: str | list[str], normalize: str,
                input_shapes: dict[str, tuple[int, ...]], n_classes: int, seed: int,
                name: str = "dense_head", logits: bool = False):
    """The dense head on ``features`` (parts of sources whose one-row shapes are
    ``input_shapes``), compiled with ``params``' optimizer, its loss and accuracy; needs Keras.

    With ``logits`` the last layer has no activation and the model is not compiled: that is
    the model :func:`~pipeline.heads._dense_training.train_dense_head` trains, and
    :func:`finish_dense_model` turns it back into the probability model.
    """
    from ..nn.layers import SignedSqrt
    from ..nn.runtime import keras, seed_random

    output = ClassifierOutput(n_classes)
    seed_random(seed)
    parts, sources = feature_parts(features), sources_of(features)
    inputs = {source: keras.Input(shape=input_shapes[source], name="features"
                                  if sources == (OUTPUT,) else input_name(source))
              for source in sources}
    pieces = []
    for part in parts:
        label = "" if len(parts) == 1 else f"_{input_name(part)}"
        x = inputs[source_of(part)]
        if part in FEATURE_VIEWS:
            x = getattr(keras.layers, _POOLS[part])(name=f"feature_view{label}")(x)
        if normalize == "power":
            x = SignedSqrt(name=f"signed_sqrt{label}")(x)
        if normalize != "none":
            x = keras.layers.UnitNormalization(name=f"unit_length{label}")(x)
        pieces.append(x)
    x = pieces[0] if len(pieces) == 1 else keras.layers.Concatenate(name="parts")(pieces)
    x = keras.layers.Dense(params.units, activation="relu", name="hidden")(x)
    x = keras.layers.Dropout(params.dropout, name="dropout")(x)
    x = keras.layers.Dense(output.units, activation=None if logits else output.activation,
                           name="classes")(x)
    model = keras.Model(inputs[sources[0]] if len(sources) == 1 else
                        {input_name(source): tensor for source, tensor in inputs.items()}, x,
                        name=name)
    if not logits:
        compile_dense_model(model, params, n_classes)
    return model


def finish_dense_model(model, params: DenseParams, n_classes: int) -> None:
    """After training on logits: the last layer outputs probabilities again, and the model is
    compiled with Keras' own classes only."""
    from ..nn.runtime import keras

    model.get_layer("classes").activation = keras.activations.get(
        ClassifierOutput(n_classes).activation)
    compile_dense_model(model, params, n_classes)


def compile_dense_model(model, params: DenseParams, n_classes: int) -> None:
    """Compile the probability model with the optimizer, loss and accuracy of ``params``."""
    from ..nn.optimizers import keras_optimizer

    model.compile(optimizer=keras_optimizer(params.optimizer, params.learning_rate),
                  loss=ClassifierOutput(n_classes).loss, metrics=["accuracy"])


class DenseKind(HeadKind):
    """``kind: dense``."""

    name = "dense"
    model_file = "model.keras"
    preprocessing = ("features", "normalize")
    relative_cost = 2
    sits_on_base = True

    def check(self, where: str, head: HeadConfig) -> None:
        """Swept parameters must be the dense head's, with valid values."""
        if head.sweep is None:
            return
        for key, values in head.sweep.params.items():
            if key in ("scale", "pca"):
                raise ConfigError(f"{where}.sweep.params.{key}: dense heads have no {key}")
            if key != "features" and key not in DenseParams.model_fields:
                raise ConfigError(f"{where}.sweep.params.{key}: the dense head has no "
                                  f"parameter {key!r} (it has: "
                                  f"{', '.join(DenseParams.model_fields)})")
            for value in values if isinstance(values, list) else []:
                try:
                    if key == "features":
                        feature_parts(value)
                    elif key == "normalize":
                        FeatureView("gap", value).transform(np.ones((1, 1, 1, 1), np.float32))
                    else:
                        head.dense_params({key: value})
                except Exception as exc:  # noqa: BLE001 (pydantic and ValueError alike)
                    raise ConfigError(f"{where}.sweep.params.{key}: {value!r}: "
                                      f"{' '.join(str(exc).split())}") from None

    def fit(self, trial: TrialSpec, train: LabelledSplit, validation: LabelledSplit,
            n_classes: int) -> FittedHead:
        """Train on logits in the head's own loop (early stopping on ``validation``)."""
        from ._dense_training import train_dense_head, training_optimizer

        started = time.perf_counter()
        params = trial.config.dense_params(trial.estimator_params())
        shapes = {source: rows.shape[1:] for source, rows in as_features(train.x).items()}
        model = dense_model(params, trial.setting("features"), trial.setting("normalize"),
                            shapes, n_classes, trial.seed, name=f"dense_head_{trial.head}",
                            logits=True)
        history = train_dense_head(model, training_optimizer(params), params,
                                   _as_model_split(model, train),
                                   _as_model_split(model, validation), n_classes,
                                   seed=trial.seed)
        finish_dense_model(model, params, n_classes)
        return FittedHead(self, model, n_classes, time.perf_counter() - started, history)

    def predict_proba(self, model, x: Features | np.ndarray, n_classes: int) -> np.ndarray:
        """One probability per class."""
        return class_probabilities(model.predict(model_inputs(model, x), verbose=0,
                                                 batch_size=256))

    def predict(self, model, x: Features | np.ndarray, n_classes: int) -> np.ndarray:
        """The most probable class."""
        return self.predict_proba(model, x, n_classes).argmax(axis=1)

    def save(self, model, folder: Path) -> Path:
        """``model.keras``."""
        path = folder / self.model_file
        save_keras_model(model, path)
        return path

    def load(self, path: Path):
        """``model.keras`` in Keras' safe mode, uncompiled."""
        return load_keras_model(path)

    def pack(self, model) -> bytes:
        """The bytes of the model's ``.keras`` file, loaded back in safe mode and without its
        optimizer: prediction needs neither."""
        return keras_model_bytes(model)

    def unpack(self, packed: bytes):
        """Inverse of :meth:`pack`."""
        return keras_model_from_bytes(packed)


def _as_model_split(model, split: LabelledSplit) -> LabelledSplit:
    """``split`` with its features as ``model`` takes them."""
    return replace(split, x=model_inputs(model, split.x))
