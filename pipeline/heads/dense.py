"""The dense head kind: the reference recipe's Keras head on cached features.

``features -> each part taken (the output: Flatten | GlobalAveragePooling2D |
GlobalMaxPooling2D; a tap as it is) and normalised -> concatenated -> standardised -> Dense
units relu -> Dropout -> Dense`` with the output of
:class:`~pipeline.nn.outputs.ClassifierOutput` (one sigmoid unit for two classes, else softmax).
On the output tensor alone it takes (N, h, w, c) features, so the finetune stage can put it on
top of the conv base; on taps, one input per source, each part taken and normalised as
:mod:`~pipeline.heads.features` does.

Standardising (the head's ``scale``, on by default) is a Keras ``Normalization`` layer whose
mean and variance are those of the training rows only, set before training and saved with the
model: ``predict``, the report and the finetune warm start all see the inputs the head learned
on, and no validation or test row shapes them. It is what made the head learn on these
weights (docs/benchmarks.md): the source recipe on the flattened output went from 0.40 to 0.52
validation on flowers-1000 with scaling alone, and on the taps from 0.32 to 0.72; Adam at 1e-3
then brought the taps to 0.79, where the logistic regression is at 0.80.

It trains with Keras' ``fit`` and its ``EarlyStopping`` callback; the ``History`` is the
head's training history.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cache.files import write_atomic

from ..config import OUTPUT, DenseParams, HeadConfig
from ..config.heads import OUTPUT_PARTS, feature_parts
from ..errors import ConfigError
from ..nn.loading import (
    keras_model_bytes,
    keras_model_from_bytes,
    load_keras_model,
    save_keras_model,
)
from ..nn.outputs import ClassifierOutput, class_probabilities
from .features import (
    FeatureRows,
    Features,
    as_features,
    part_width,
    source_of,
    sources_of,
)
from .kind import FittedHead, HeadKind
from .splits import VALIDATION_BATCH, LabelledSplit, LazySplit
from .trial import TrialSpec

_POOLS = {"flatten": "Flatten", "gap": "GlobalAveragePooling2D", "gmp": "GlobalMaxPooling2D"}
#: The name of the standardising layer in a dense head that has one.
STANDARDIZE_LAYER = "standardize"
# Rows per chunk while the statistics are summed, and numbers per float64 slice of a chunk
# (memory, not maths)
_STATISTICS_CHUNK = 4096
_STATISTICS_NUMBERS = 1 << 22
# Rows of a split in memory gathered together for a tf.data pipeline (memory, not maths)
_GATHERED_ROWS = 4096
# Batches a tf.data pipeline makes ahead of the training steps
_PREFETCHED = 2
# A standard deviation below this is no scale to divide by
_SMALLEST_STD = 10 * float(np.finfo(np.float32).eps)
#: Bytes of training and validation features above which the dense head feeds Keras batches
#: gathered from its arrays (:func:`keras_batches`) instead of the arrays themselves. Keras'
#: ``fit`` on arrays converts them to tensors and gathers its shuffled batches from those: 1.7x
#: their size more (70,000 rows of 1,536 numbers: 2.2 GB peak against 1.4 GB with batches),
#: for 10-20% less time per epoch at 32 rows a batch (Keras 3.15, TensorFlow, AMD EPYC; the
#: batches then came from a PyDataset, the model's front inside it).
KERAS_COPY_LIMIT = 64 * 2**20


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
                input_shapes: dict[str, tuple[int, ...]], n_classes: int, seed: int, *,
                scale: bool, name: str = "dense_head"):
    """The dense head on ``features`` (parts of sources whose one-row shapes are
    ``input_shapes``), compiled with ``params``' optimizer, its loss and accuracy; needs Keras.

    With ``scale`` the concatenated parts pass a :data:`STANDARDIZE_LAYER` whose statistics
    are still the identity's (mean 0, variance 1): :func:`set_standardization` gives it the
    training rows' before training.
    """
    from ..nn.layers import SignedSqrt
    from ..nn.optimizers import keras_optimizer
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
        if part in OUTPUT_PARTS:
            x = getattr(keras.layers, _POOLS[part])(name=f"output_{part}")(x)
        if normalize == "power":
            x = SignedSqrt(name=f"signed_sqrt{label}")(x)
        if normalize != "none":
            x = keras.layers.UnitNormalization(name=f"unit_length{label}")(x)
        pieces.append(x)
    x = pieces[0] if len(pieces) == 1 else keras.layers.Concatenate(name="parts")(pieces)
    if scale:
        x = keras.layers.Normalization(name=STANDARDIZE_LAYER)(x)
    x = keras.layers.Dense(params.units, activation="relu", name="hidden")(x)
    x = keras.layers.Dropout(params.dropout, name="dropout")(x)
    x = keras.layers.Dense(output.units, activation=output.activation, name="classes")(x)
    model = keras.Model(inputs[sources[0]] if len(sources) == 1 else
                        {input_name(source): tensor for source, tensor in inputs.items()}, x,
                        name=name)
    model.compile(optimizer=keras_optimizer(params.optimizer, params.learning_rate),
                  loss=output.loss, metrics=["accuracy"])
    return model


def standardization_statistics(parts: str | list[str], normalize: str,
                               x: Features | np.ndarray | LazySplit
                               ) -> tuple[np.ndarray, np.ndarray]:
    """(mean, variance), each (d,) float32, for the rows ``parts`` make of ``x`` (the training
    split, in memory or read from the cache a chunk at a time): the mean of every feature, and
    per part one variance, the mean of its features' variances, shared by all of them.

    Centring each feature and scaling each part as a whole keeps the geometry of a part's
    vectors (a unit-length, power-normalised tap stays a direction, as the linear heads see
    it), while parts of very different magnitudes are brought to one scale, and a feature that
    barely varies on the training rows is never divided by its own tiny deviation. Scaling
    every feature on its own (StandardScaler's rule) measured the same on flowers-1000
    (docs/benchmarks.md). Computed a chunk of rows at a time, in float64.
    """
    rows = FeatureRows(parts, normalize)
    count, total, squares, widths = 0, None, None, None
    for x_chunk in _chunks_of(x):
        if widths is None:
            widths = [FeatureRows(part, normalize).transform(
                {source: array[:1] for source, array in x_chunk.items()}).shape[1]
                for part in feature_parts(parts)]
            total, squares = np.zeros(sum(widths)), np.zeros(sum(widths))
        chunk = rows.transform(x_chunk)
        count += len(chunk)
        # float64 a slice at a time: a copy of the whole chunk would be twice its size
        step = max(1, _STATISTICS_NUMBERS // chunk.shape[1])
        for start in range(0, len(chunk), step):
            wide = chunk[start:start + step].astype(np.float64)
            total += wide.sum(axis=0)
            squares += np.einsum("ij,ij->j", wide, wide)
    mean = total / count
    per_feature = np.maximum(squares / count - mean ** 2, 0.0)
    variance = np.concatenate([np.full(width, piece.mean()) for width, piece in
                               zip(widths, np.split(per_feature, np.cumsum(widths)[:-1]))])
    # a part constant on every training row is left unscaled, as scikit-learn's
    # StandardScaler leaves such a feature: dividing by ~0 would blow up any new value
    variance[variance < _SMALLEST_STD ** 2] = 1.0
    return mean.astype(np.float32), variance.astype(np.float32)


def _chunks_of(x: Features | np.ndarray | LazySplit) -> Iterator[Features]:
    """``x`` a chunk of images at a time, as ``{source: array}``: a lazy split's own chunks,
    or :data:`_STATISTICS_CHUNK` rows of features in memory."""
    if isinstance(x, LazySplit):
        yield from (chunk for chunk, _ in x.chunks())
        return
    x = as_features(x)
    count = len(next(iter(x.values())))
    for start in range(0, count, _STATISTICS_CHUNK):
        yield {source: array[start:start + _STATISTICS_CHUNK] for source, array in x.items()}


class FrontRows:
    """The rows a dense head's ``hidden`` layer sees, made with numpy from its features: the
    parts of ``features`` taken and normalised by :class:`~pipeline.heads.features.FeatureRows`
    (what the model's pooling and normalisation layers compute), then, with ``statistics``
    (mean, variance), standardised as its Keras ``Normalization`` layer does: ``(x - mean) /
    max(sqrt(variance), epsilon)``.

    Keras trains the head's core (:func:`model_core`) on these rows: made once for rows held
    in memory, once a chunk for rows streamed, where inside the model they would be made
    again at every step, batch by batch. In numpy, not in a Keras model of the front layers:
    that one, run in a ``tf.data`` map, made a streamed trial peak 68-86 MiB above the front
    inside the model, these rows 29-34 MiB (VmHWM of ``pipeline run heads`` with one dense
    trial, 6 epochs of 70,000 rows of four taps, chunks of 16 MB; three runs and two). Held
    in memory, an epoch of those rows took 4.0-4.1 s (medians) with the front inside the
    model, 3.6 s on rows made beforehand (32 a batch, AMD EPYC, 2 cores)."""

    def __init__(self, features: str | list[str], normalize: str,
                 shapes: dict[str, tuple[int, ...]],
                 statistics: tuple[np.ndarray, np.ndarray] | None, epsilon: float):
        self.rows = FeatureRows(features, normalize)
        self.width = sum(part_width(part, shapes[source_of(part)])
                         for part in feature_parts(features))
        self.mean, self.scale = (None, None) if statistics is None else (
            statistics[0], np.maximum(np.sqrt(statistics[1]), np.float32(epsilon)))

    def __call__(self, x: Features | np.ndarray) -> np.ndarray:
        """(N, d) float32 rows of ``x``."""
        rows = self.rows.transform(x)
        if self.mean is None:
            return rows
        return (rows - self.mean) / self.scale


def model_core(model):
    """The part of ``model`` (:func:`dense_model`) from its ``hidden`` layer on, taking the
    rows :class:`FrontRows` makes, compiled with ``model``'s optimizer (its steps are saved
    with ``model``), loss and metrics. Its layers are ``model``'s: training it trains
    ``model``."""
    from ..nn.runtime import keras

    hidden = model.get_layer("hidden")
    x = taken = keras.Input(shape=hidden.input.shape[1:], name="rows")
    for name in ("hidden", "dropout", "classes"):
        x = model.get_layer(name)(x)
    core = keras.Model(taken, x, name=f"{model.name}_core")
    core.compile(optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"])
    return core


def keras_batches(front: FrontRows, split: LabelledSplit | LazySplit, batch_size: int,
                  n_classes: int, seed: int | None = None):
    """A ``keras.utils.PyDataset`` of (rows, labels) batches of ``split`` for a dense head's
    core (:func:`model_core`), the rows made by ``front`` a chunk of the split at a time: a
    :class:`LazySplit` read from the cache a chunk at a time, a split in memory gathered
    :data:`_GATHERED_ROWS` rows at a time, so that no copy of a whole split is ever made
    (Keras' own ``fit`` on arrays copies them all, 1.7x their size, see
    :data:`KERAS_COPY_LIMIT`). :func:`fit_input` gives it to Keras.

    With ``seed``, each epoch shuffles the rows anew: a split in memory whole, a lazy one in
    chunks drawn from the whole split (:meth:`~pipeline.heads.splits.SplitReader.chunk_positions`);
    without, batches come in split order (for validation, which must see every row once per
    epoch). Batch ``i`` is the same whenever Keras asks for it within an epoch (it asks for
    the first ones twice)."""
    import keras

    if isinstance(split, LazySplit):
        reader = split.reader()

        def plan(rng: np.random.Generator | None) -> list[np.ndarray]:
            return reader.chunk_positions(rng=rng)

        def load(positions: np.ndarray) -> tuple[Features, np.ndarray]:
            return reader.read(positions)
    else:
        x_all, y_all = as_features(split.x), split.y

        def plan(rng: np.random.Generator | None) -> list[np.ndarray]:
            order = np.arange(len(y_all)) if rng is None else rng.permutation(len(y_all))
            return [order[start:start + _GATHERED_ROWS]
                    for start in range(0, len(order), _GATHERED_ROWS)]

        def load(positions: np.ndarray) -> tuple[Features, np.ndarray]:
            return {source: array[positions] for source, array in x_all.items()}, \
                y_all[positions]

    rows = len(split)
    # The front and the rows are kept on the object, not in closures of its class: TensorFlow
    # keeps every dataset made from a Python generator, and so this object, for the life of
    # the process (tensorflow#123530), and :meth:`release` must be able to let go of the rows.
    class Batches(keras.utils.PyDataset):
        def __init__(self, front, plan, load):
            super().__init__()
            self.front, self.plan, self.load = front, plan, load
            self.rng = None if seed is None else np.random.default_rng(seed)
            self.batch_size, self.rows, self.n_classes = batch_size, rows, n_classes
            self.chunks: list[np.ndarray] = []  # this epoch's positions, chunk by chunk
            self.batches: list[tuple[int, int]] = []
            self.loaded: tuple[int, np.ndarray, np.ndarray] | None = None  # (chunk, rows, y)
            self.served = False  # whether :meth:`epoch_chunks` has served this epoch
            self.on_epoch_end()

        def __len__(self) -> int:
            return len(self.batches)

        def __getitem__(self, index: int):
            chunk, batch = self.batches[index]
            if self.loaded is None or self.loaded[0] != chunk:
                self.loaded = None  # one chunk in memory, not the last and the next
                x, y = self.load(self.chunks[chunk])
                self.loaded = (chunk, self.front(x), y)
            _, made, y = self.loaded
            taken = slice(batch * batch_size, (batch + 1) * batch_size)
            return made[taken], _labels(y[taken], n_classes)

        def epoch_chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            """(rows, labels) of one epoch, in the order of its batches, a chunk at a time:
            for a pipeline that cuts the batches itself (:func:`fit_input`). Each call is
            the next epoch (a consumer that knows the epoch's length may stop before the
            end)."""
            if self.served:
                self.on_epoch_end()
            self.served = True
            for positions in self.chunks:
                x, y = self.load(positions)
                yield self.front(x), _labels(y, n_classes)

        def on_epoch_end(self) -> None:
            if self.chunks and self.rng is None:
                return  # the same batches every epoch
            self.chunks = self.plan(self.rng)
            self.batches = [(chunk, batch) for chunk, positions in enumerate(self.chunks)
                            for batch in range(-(-len(positions) // batch_size))]
            self.loaded = None

        def release(self) -> None:
            """Let go of the front and the rows (after ``fit``)."""
            self.front = self.plan = self.load = self.loaded = None
            self.chunks = []

    return Batches(front, plan, load)


def fit_input(batches):
    """What Keras' ``fit`` takes for ``batches`` (:func:`keras_batches`): on TensorFlow, a
    ``tf.data`` pipeline that takes :meth:`epoch_chunks` whole and cuts them into batches
    itself, in a thread of its own; on other backends the ``PyDataset`` itself.

    A ``PyDataset`` hands Keras one batch per Python call, 2,200 calls an epoch for 70,000
    rows in batches of 32, and reads its chunks in the thread that runs the training steps;
    the ``tf.data`` pipeline makes one call a chunk and reads the next chunk while the model
    trains (a streamed epoch, medians of two runs: 5.4 and 4.9 s through the ``PyDataset``,
    4.9 and 4.4 s through ``tf.data``, the front then inside the model; 70,000 rows of 1,536
    numbers, AMD EPYC).
    """
    from ..nn.runtime import BACKEND

    if BACKEND != "tensorflow":
        return batches
    from ..nn.runtime import tf

    labels = _labels(np.zeros(0, np.int64), batches.n_classes)
    signature = (tf.TensorSpec((None, batches.front.width), tf.float32),
                 tf.TensorSpec((None, *labels.shape[1:]), tf.as_dtype(labels.dtype)))
    # TensorFlow keeps the generator (and so ``batches``) for the life of the process
    # (tensorflow#123530): ``batches.release()`` lets go of the rows
    dataset = tf.data.Dataset.from_generator(batches.epoch_chunks, output_signature=signature)
    steps = -(-batches.rows // batches.batch_size)
    return (dataset.rebatch(batches.batch_size).prefetch(_PREFETCHED)
            .apply(tf.data.experimental.assert_cardinality(steps)))


def set_standardization(model, mean: np.ndarray, variance: np.ndarray) -> None:
    """Give ``model``'s :data:`STANDARDIZE_LAYER` these (d,) statistics; they are weights of
    the layer, so they are saved and loaded with the model."""
    layer = model.get_layer(STANDARDIZE_LAYER)
    layer.adapt_mean.assign(mean)
    layer.adapt_variance.assign(variance)
    layer.finalize_state()


def _nbytes(split: LabelledSplit | LazySplit) -> int:
    """Bytes of the features ``split`` holds in memory (none for a :class:`LazySplit`)."""
    if isinstance(split, LazySplit):
        return 0
    return sum(array.nbytes for array in as_features(split.x).values())


def _labels(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Class indices as the loss takes them: (N, 1) float32 for one sigmoid unit, else (N,)."""
    return y.astype(np.float32)[:, None] if ClassifierOutput(n_classes).binary else \
        y.astype(np.int32)


class DenseKind(HeadKind):
    """``kind: dense``."""

    name = "dense"
    model_file = "model.keras"
    preprocessing = ("features", "normalize", "scale")
    relative_cost = 2
    sits_on_base = True
    loads_runtime = True
    predicts_by_proba = True

    def check(self, where: str, head: HeadConfig) -> None:
        """Swept parameters must be the dense head's, with valid values."""
        if head.sweep is None:
            return
        for key, values in head.sweep.params.items():
            if key == "pca":
                raise ConfigError(f"{where}.sweep.params.pca: dense heads have no pca")
            if key not in ("features", "normalize", "scale") and \
                    key not in DenseParams.model_fields:
                raise ConfigError(f"{where}.sweep.params.{key}: the dense head has no "
                                  f"parameter {key!r} (it has: features, normalize, scale, "
                                  f"{', '.join(DenseParams.model_fields)})")
            for value in values if isinstance(values, list) else []:
                try:
                    if key == "features":
                        feature_parts(value)
                    elif key == "normalize":
                        FeatureRows("gap", value).transform(np.ones((1, 1, 1, 1), np.float32))
                    elif key == "scale":
                        if not isinstance(value, bool):
                            raise ValueError("scale is true or false")
                    else:
                        head.dense_params({key: value})
                except Exception as exc:  # noqa: BLE001 (pydantic and ValueError alike)
                    raise ConfigError(f"{where}.sweep.params.{key}: {value!r}: "
                                      f"{' '.join(str(exc).split())}") from None

    def fit(self, trial: TrialSpec, train: LabelledSplit | LazySplit,
            validation: LabelledSplit | LazySplit, n_classes: int) -> FittedHead:
        """Standardise with ``train``'s statistics (``scale``), then Keras' ``fit``; with
        ``patience``, Keras' ``EarlyStopping`` on ``validation``'s accuracy, ending with the
        best epoch's weights when ``restore_best`` (the first of equals). Splits read from
        the cache (:class:`LazySplit`, features beyond the sweep's memory budget) are streamed
        a chunk at a time: the chunks in a seeded random order each epoch, rows shuffled
        within each; splits in memory whose training and validation rows together exceed
        :data:`KERAS_COPY_LIMIT` bytes are fed in batches gathered from their arrays, fully
        shuffled each epoch. Keras trains the model's core (:func:`model_core`) on the rows
        :class:`FrontRows` makes: once for rows in memory, once a chunk for batches."""
        from ..nn.callbacks import early_stopping
        from ..nn.runtime import keras

        if not len(train):
            raise ValueError("the dense head needs at least one training row")
        started = time.perf_counter()
        params = trial.config.dense_params(trial.estimator_params())
        features, normalize = trial.setting("features"), trial.setting("normalize")
        streamed = isinstance(train, LazySplit)
        batched = streamed or _nbytes(train) + _nbytes(validation) > KERAS_COPY_LIMIT
        shapes = ({source: tuple(train.store(source).feature_shape)
                   for source in train.fingerprints} if streamed else
                  {source: rows.shape[1:] for source, rows in as_features(train.x).items()})
        model = dense_model(params, features, normalize, shapes, n_classes, trial.seed,
                            name=f"dense_head_{trial.head}", scale=trial.setting("scale"))
        statistics = standardization_statistics(
            features, normalize, train if streamed else train.x) \
            if trial.setting("scale") else None
        if statistics is not None:
            set_standardization(model, *statistics)
        front = FrontRows(features, normalize, shapes, statistics, keras.config.epsilon())
        core = model_core(model)
        watched = len(validation) > 0
        callbacks = early_stopping(params.patience, params.restore_best) if watched else []
        feeds = {}
        if batched:
            feeds["x"] = keras_batches(front, train, params.batch_size, n_classes, trial.seed)
            if watched:
                feeds["validation_data"] = keras_batches(front, validation, VALIDATION_BATCH,
                                                         n_classes)
            batches = {key: fit_input(feed) for key, feed in feeds.items()} | {"shuffle": False}
        else:
            batches = {"x": front(train.x), "y": _labels(train.y, n_classes),
                       "batch_size": params.batch_size, "shuffle": True,
                       "validation_batch_size": VALIDATION_BATCH}
            if watched:
                batches["validation_data"] = (front(validation.x),
                                              _labels(validation.y, n_classes))
        try:
            # the core's weights are the model's: training one trains the other
            history = core.fit(**batches, epochs=params.epochs, callbacks=callbacks, verbose=0)
        finally:
            for feed in feeds.values():
                feed.release()
        curves = {key: [float(value) for value in values]
                  for key, values in history.history.items()}
        return FittedHead(self, model, n_classes, time.perf_counter() - started, curves)

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

    def save_packed(self, packed: bytes, folder: Path) -> Path:
        """``model.keras`` from the bytes :meth:`pack` made (they are that file), without
        loading Keras."""
        path = folder / self.model_file
        write_atomic(path, packed)
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
