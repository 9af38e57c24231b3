"""The one interface every head kind implements, and a fitted head.

A :class:`HeadKind` says, for one ``kind`` of stages.yaml, how its settings are checked before
any work, how a trial is fitted, how the fitted model predicts, and how it is saved, loaded and
sent between processes. The stage, the sweep, prediction and the finetune stage only talk to
this interface; which kinds exist is :mod:`pipeline.heads.registry`'s list.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import HeadConfig
from .splits import LabelledSplit, LazySplit
from .trial import TrialSpec


class HeadKind(ABC):
    """One kind of head. Subclasses set the class attributes and implement the abstract
    methods; the others have defaults that fit most kinds."""

    name: str = ""
    #: the model file of a saved head folder
    model_file: str = ""
    #: trial settings that shape the features before the model (always ``features`` first)
    preprocessing: tuple[str, ...] = ("features",)
    #: a rough rank of fit time: dask starts costly trials first
    relative_cost: int = 1
    #: a Keras model on (h, w, c) features, which the finetune stage can put on the base
    sits_on_base: bool = False
    #: fitting loads a runtime that stays in the process for the rest of its life (Keras, and
    #: with it TensorFlow's ~510 MiB): a sweep in one process fits such trials in a child
    #: process of their own when its rows are large (:mod:`~pipeline.heads.sweep`)
    loads_runtime: bool = False
    #: the most training rows a trial fits on unless the head says otherwise (None: no limit)
    max_train_rows: int | None = None
    #: why :attr:`max_train_rows` is what it is, and what to do instead, for the message
    max_train_rows_reason: str = ""
    #: its ``predict`` is the most probable class of its ``predict_proba``, so one pass gives
    #: both (not so for one-vs-rest probabilities that saturate, as SGD's do). On an exact tie
    #: of probabilities the first class wins, where predict may have seen a decision value
    #: too small to change a probability (a binary logistic regression at C=1e-8)
    predicts_by_proba: bool = False
    #: fits and predicts on the rows a FeatureRows makes (:class:`PreparedRows`), so a sweep
    #: can make them once for every trial of one feature setting
    takes_rows: bool = False

    @abstractmethod
    def check(self, where: str, head: HeadConfig) -> None:
        """Raise :class:`~pipeline.errors.ConfigError` (naming ``where``, the head's key) for
        a parameter or swept value this kind cannot take; before any work starts."""

    def chunk_rows(self, trial: TrialSpec) -> int | None:
        """Rows per chunk when ``trial`` reads the cache a chunk at a time (training and
        scoring); None when it reads whole splits from memory."""
        return None

    @abstractmethod
    def fit(self, trial: TrialSpec, train: LabelledSplit | LazySplit,
            validation: LabelledSplit | LazySplit, n_classes: int) -> FittedHead:
        """Fit ``trial`` on ``train``; ``validation`` may serve early stopping only."""

    @abstractmethod
    def predict_proba(self, model: Any, x: np.ndarray, n_classes: int) -> np.ndarray | None:
        """(N, n_classes) class probabilities of (N, h, w, c) features, or None when the
        model gives none."""

    @abstractmethod
    def predict(self, model: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
        """(N,) predicted class indices of (N, h, w, c) features."""

    @abstractmethod
    def save(self, model: Any, folder: Path) -> Path:
        """Write the model into ``folder`` as :attr:`model_file`; returns its path."""

    @abstractmethod
    def load(self, path: Path) -> Any:
        """The model saved at ``path``, loaded without running code from the file
        (:class:`~pipeline.errors.HeadLoadError` otherwise)."""

    def pack(self, model: Any) -> Any:
        """The model in a form that pickles (to travel between processes)."""
        return model

    def unpack(self, packed: Any) -> Any:
        """Inverse of :meth:`pack`."""
        return packed

    def save_packed(self, packed: Any, folder: Path) -> Path:
        """:meth:`save` of the model ``packed`` is; kinds whose packed form is their model
        file write it as it is, without loading the model (nor its runtime)."""
        return self.save(self.unpack(packed), folder)

    def describe(self, trial: TrialSpec) -> dict[str, Any]:
        """Everything that defines ``trial``, as plain data for leaderboards and head.json."""
        return {**{key: trial.setting(key) for key in self.preprocessing},
                **trial.estimator_params()}

    def __repr__(self) -> str:
        return f"<head kind {self.name}>"


#: Where a :class:`FittedHead` that arrived from another process keeps its packed model.
_PACKED = "_packed_model"


@dataclass
class FittedHead:
    """A trained head: its kind, its model and its class count."""

    kind: HeadKind
    # out of repr and ==, which would unpack a packed model (loading its runtime) to show it
    model: Any = field(repr=False, compare=False)
    n_classes: int
    fit_seconds: float = 0.0
    history: dict[str, list[float]] | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        packed = state.pop(_PACKED, None)
        state["model"] = packed if self.packed else self.kind.pack(self.model)
        return state

    def __setstate__(self, state: dict) -> None:
        # The model stays packed until it is used: a Keras model sent from another process
        # would otherwise load Keras (and TensorFlow's ~510 MiB) into this one on arrival,
        # where it may only be saved (:meth:`save`), or not be used at all.
        state = dict(state)
        self.__dict__[_PACKED] = state.pop("model")
        self.__dict__.update(state)

    def __getattr__(self, name: str) -> Any:
        # called only for attributes not found: the model of a head still packed (the bytes
        # are dropped only once the model is made, so a failed unpack can be tried again)
        if name == "model" and _PACKED in self.__dict__:
            self.__dict__["model"] = self.kind.unpack(self.__dict__[_PACKED])
            del self.__dict__[_PACKED]
            return self.__dict__["model"]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def packed(self) -> bool:
        """Whether the model arrived from another process and has not been used (nor
        replaced) here yet."""
        return "model" not in self.__dict__ and _PACKED in self.__dict__

    def save(self, folder: Path) -> Path:
        """Write the model into ``folder`` as its kind's model file; returns its path. A
        model still packed is written from its packed form (:meth:`HeadKind.save_packed`)."""
        if self.packed:
            return self.kind.save_packed(self.__dict__[_PACKED], folder)
        return self.kind.save(self.model, folder)

    def predict_proba(self, x: np.ndarray) -> np.ndarray | None:
        """(N, n_classes) class probabilities, or None when the model gives none (SVM)."""
        return self.kind.predict_proba(self.model, x, self.n_classes)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N,) predicted class indices."""
        return self.kind.predict(self.model, x, self.n_classes)

    def predict_split(self, split: LabelledSplit | LazySplit, chunk_rows: int | None = None
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        """(predicted (N,) class indices, probabilities (N, C) or None) of every row of
        ``split``, a chunk at a time where the split reads lazily."""
        predicted, probabilities = [], []
        for x, _ in split.chunks(chunk_rows):
            proba = self.predict_proba(x)
            # one pass where the answer is the most probable class (kNN would search every
            # neighbour twice); the model's own predict where it is not, or has no proba
            predicted.append(np.argmax(proba, axis=1).astype(np.int64)
                             if proba is not None and self.kind.predicts_by_proba else
                             self.predict(x))
            probabilities.append(proba)
        if not predicted:
            return np.empty(0, np.int64), None
        proba = None if probabilities[0] is None else np.concatenate(probabilities)
        return np.concatenate(predicted), proba
