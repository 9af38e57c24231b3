"""Trials of every head, fitted and scored on validation, in parallel on dask.distributed.

The training and validation rows go to the workers once (``scatter``, broadcast), named: each
worker reads from the cache the features its trials use (a remote scheduler's workers get them
carried along). The test split is never sent: selection cannot see it. Only each head's best
model so far is kept, on its worker, and only the winners travel back.

``cluster.scheduler``: ``local`` starts a LocalCluster with one single-threaded worker process
per core; ``synchronous`` runs trials one after another in this process; ``auto`` picks one of
the two by the sweep's size (:func:`runs_in_process`), and in this process fits the trials
that load a runtime (the dense head's Keras) first, in a child process that ends with them,
when the rows are large (:func:`runs_runtimes_apart`); an address such as
``tcp://host:8786`` uses a running scheduler whose workers can import this package.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from operator import itemgetter
from typing import IO

import numpy as np
from tqdm import tqdm

from ..cluster import sweep_client, usable_cores
from ..config import ClusterConfig
from ..evaluate import SplitScores, evaluate
from .kind import FittedHead
from .leaderboard import TrialResult, rank_key
from .splits import TrainingData
from .trials import Trial

#: The training rows a trial's training accuracy is measured on, at most (drawn at random):
#: it tells a model that learned its training rows by heart from one that did not, which a
#: sample shows as well as the whole split, and predicting 10^5 rows again costs a kNN head
#: more than its validation score does. 1,000 rows give it to within 3 points (95%).
TRAIN_ACCURACY_ROWS = 1000


@dataclass
class ScoredHead:
    """A trial's fitted head and its scores on the validation split."""

    model: FittedHead
    validation: SplitScores


def fit_and_score(trial: Trial, data: TrainingData) -> tuple[TrialResult, ScoredHead | None]:
    """Fit one trial on the training split and score it on the validation split.

    Returns the leaderboard row and the fitted head with its validation scores (None when the
    trial failed). Never raises for a bad parameter combination: the trial is recorded as
    failed.
    """
    result = TrialResult(trial.head, trial.index, trial.kind.name, trial.describe())
    # Trials run one per worker thread (or in the main thread), so recording is safe here;
    # on a cluster the warnings would otherwise be lost in the workers' logs.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = _fit_and_score(trial, data, result)
    messages = dict.fromkeys(f"{w.category.__name__}: {' '.join(str(w.message).split())}"
                             for w in caught)
    result.warnings = " | ".join(m[:200] for m in messages)[:1000]
    return result, fitted


def _fit_and_score(trial: Trial, data: TrainingData,
                   result: TrialResult) -> ScoredHead | None:
    try:
        trial.check_train_rows(len(data.train))  # before anything is read
        train, validation = data.splits(trial.reading)
        fitted = trial.fit(train, validation, data.n_classes)
        predicted, proba = fitted.predict_split(validation, trial.chunk_rows)
        train_sample = train.sample(TRAIN_ACCURACY_ROWS, trial.spec.seed)
        train_predicted, _ = fitted.predict_split(train_sample, trial.chunk_rows)
        scores = evaluate(validation.y, predicted, proba, list(data.classes))
    except Exception as exc:  # noqa: BLE001 (one bad setting must not end a sweep)
        result.status = "failed"
        result.error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
        logging.getLogger(__name__).debug("trial failed\n%s", traceback.format_exc())
        return None
    result.val_accuracy = scores.accuracy
    result.val_f1_macro = scores.f1_macro
    result.val_log_loss = scores.log_loss
    result.train_accuracy = (float(np.mean(train_predicted == train_sample.y))
                             if len(train_sample) else math.nan)
    result.fit_seconds = fitted.fit_seconds
    return ScoredHead(fitted, scores)


@dataclass
class SweepOutcome:
    """Every trial's result, in trial order, and the fitted head of each head's best trial
    with its validation scores."""

    results: list[TrialResult]
    best: dict[str, ScoredHead]


class _BestPerHead:
    """Keeps, per head, the model of the best trial seen so far (ranked as in rank_trials)."""

    def __init__(self, metric: str):
        self.metric = metric
        self.best: dict[str, tuple[tuple, object]] = {}

    def offer(self, order: int, result: TrialResult, model) -> object | None:
        """Keep ``model`` if its trial beats the head's best; returns the model let go."""
        if result.status != "ok":
            return model
        key = rank_key(result, order, self.metric)
        held = self.best.get(result.head)
        if held is not None and held[0] <= key:
            return model
        self.best[result.head] = (key, model)
        return held[1] if held else None

    def kept(self) -> dict[str, object]:
        """The model (or its future) of each head's best trial so far."""
        return {head: model for head, (_, model) in self.best.items()}


#: Under ``cluster.scheduler: auto``, the least work (training rows x numbers per row, summed
#: over the trials) for which a sweep goes to a LocalCluster: below it, the cluster's start
#: and every worker's own reading of the features cost more than the other cores save, and
#: fits that use every core through BLAS gain nothing from it anyway. On 2 cores, the
#: repository's ten scikit-learn trials (``pipeline run heads``, bench/heads_scale.py) took
#: 9.1-10.1 s in this process against 10.2-10.3 s on a LocalCluster at 2,000 rows of 1,536
#: numbers (3 x 10^7), and 18.0 s against 16.7 s at 7,100 rows (1.1 x 10^8).
PARALLEL_SWEEP_WORK = 10**8


def runs_in_process(trials: list[Trial], data: TrainingData, cluster: ClusterConfig,
                    memory_budget_mb: int) -> bool:
    """Whether the sweep of ``trials`` runs in this process, one trial after another:
    always with ``synchronous``, never with ``local`` or a scheduler's address; with
    ``auto``, unless the machine has several cores, there are more trials than one, the
    largest reading a trial holds fits once here and once in each worker within
    ``memory_budget_mb``, and the work reaches :data:`PARALLEL_SWEEP_WORK`."""
    if cluster.scheduler != "auto":
        return cluster.scheduler == "synchronous"
    workers = cluster.workers or usable_cores()
    if workers < 2 or len(trials) < 2:
        return True
    readings = [trial.reading for trial in trials]
    held = max((data.nbytes(r) for r in readings if not r.lazy), default=0)
    if (workers + 1) * held > memory_budget_mb * 2**20:
        return True
    work = sum(len(data.train) * data.width(reading) for reading in readings)
    return work < PARALLEL_SWEEP_WORK


#: Under ``cluster.scheduler: auto``, the bytes of rows (the largest reading that a trial
#: run in this process holds, training and validation) from which a sweep run in this process
#: fits the trials whose kind loads a runtime
#: (:attr:`~pipeline.heads.kind.HeadKind.loads_runtime`: the dense head's Keras) in a child
#: process that ends with them, streaming their features. Keras on TensorFlow keeps ~510
#: MiB in a process that imported it (669 against 158 MiB after the stage's imports; Keras
#: 3.15, TensorFlow 2.21, CPU): beside rows of hundreds of MiB it is what decides the sweep's
#: peak, while the child's start (a fresh interpreter importing the pipeline and Keras, which
#: this process then does not import) is small beside a sweep of that size.
RUNTIME_APART_BYTES = 64 * 2**20
#: The memory budget of that child, at most: it streams every reading, in chunks of a
#: sixteenth of its budget (:meth:`~pipeline.heads.splits.TrainingData.stream_rows`). At 10^5
#: images, 4 epochs, the sweep peaked at 1,205 MiB over both processes with chunks of 16 MB,
#: 1,351 MiB with the 64 MB of the default budget's sixteenth; larger chunks did not make
#: epochs measurably faster (docs/benchmarks.md).
APART_MEMORY_BUDGET = 256 * 2**20


def runs_runtimes_apart(trials: list[Trial], data: TrainingData) -> bool:
    """Whether a sweep of ``trials`` in this process fits those that load a runtime in a
    child process: when there are such trials, and others whose largest reading held here
    reaches :data:`RUNTIME_APART_BYTES`; never where this interpreter cannot start another
    (no ``sys.executable``, a frozen application)."""
    if not sys.executable or getattr(sys, "frozen", False):
        return False
    held_here = [data.nbytes(trial.reading) for trial in trials
                 if not trial.kind.loads_runtime and not trial.reading.lazy]
    return (any(trial.kind.loads_runtime for trial in trials)
            and max(held_here, default=0) >= RUNTIME_APART_BYTES)


def run_trials(trials: list[Trial], data: TrainingData, cluster: ClusterConfig,
               metric: str = "val_accuracy", progress: bool = True,
               in_process: bool | None = None, runtimes_apart: bool = False) -> SweepOutcome:
    """Run ``trials`` where ``cluster`` says (in this process when ``in_process``; None:
    with ``synchronous`` only); results in the order of ``trials``. In this process, with
    ``runtimes_apart``, the trials whose kind loads a runtime (the dense head's Keras) run
    first, in a child process that ends with them (:func:`runs_runtimes_apart`).

    Only each head's best model (by ``metric``) is kept, so a sweep of hundreds of trials
    holds at most one fitted model per head, and the model tested later is the very one that
    was selected (no refit).
    """
    if in_process is None:
        in_process = cluster.scheduler == "synchronous"
    bar = tqdm(total=len(trials), unit="trial", desc="heads", disable=None if progress else True,
               dynamic_ncols=True)
    with bar:
        if in_process:
            return _run_in_process(trials, data, metric, bar, runtimes_apart)
        if cluster.on_scheduler:  # its workers may not see the cache: the features go along
            data = data.carrying(tuple(dict.fromkeys(
                source for trial in trials if not trial.reads_in_chunks
                for source in trial.sources)))
        elif data.memory_budget is not None:  # this machine's memory, shared by its workers
            workers = cluster.workers or usable_cores()
            data = data.within(data.memory_budget // (workers + 1))
        with sweep_client(cluster) as client:
            return _run_on_cluster(client, trials, data, metric, bar)


def _run_in_process(trials: list[Trial], data: TrainingData, metric: str,
                    bar, runtimes_apart: bool = False) -> SweepOutcome:
    """The trials one after another, those of one reading together (it is read once, and
    let go after its last trial, before the next reading's rows are made); with
    ``runtimes_apart``, those whose kind loads a runtime first, in a child process."""
    keeper = _BestPerHead(metric)
    results: list[TrialResult | None] = [None] * len(trials)
    apart = [i for i, trial in enumerate(trials) if runtimes_apart and trial.kind.loads_runtime]
    # strict: the child is waited for, its memory given back, before the next trial here;
    # closing: an error here ends the child too
    with contextlib.closing(fit_and_score_apart([trials[i] for i in apart], data)) as fitted:
        for index, (result, model) in zip(apart, fitted, strict=True):
            results[index] = result
            keeper.offer(index, result, model)
            bar.update()
    here = sorted(set(range(len(trials))) - set(apart))
    readings = list(dict.fromkeys(trials[i].reading for i in here))
    order = sorted(here, key=lambda i: readings.index(trials[i].reading))
    last = {trials[index].reading: index for index in order}
    for index in order:
        results[index], model = fit_and_score(trials[index], data)
        keeper.offer(index, results[index], model)
        if last[trials[index].reading] == index:
            data.let_go(trials[index].reading)
        bar.update()
    return SweepOutcome(results, keeper.kept())


#: The command that fits trials apart (:mod:`pipeline.heads.child`).
CHILD_COMMAND = (sys.executable, "-m", "pipeline.heads.child")


def fit_and_score_apart(trials: list[Trial], data: TrainingData
                        ) -> Iterator[tuple[TrialResult, ScoredHead | None]]:
    """:func:`fit_and_score` of each of ``trials``, in order, in one child process started
    for them (a fresh interpreter: :mod:`pipeline.heads.child`), which streams its own rows
    from the cache, whatever their size, and ends after the last: beside the runtime, held
    rows would make the child, and this process beside it, peak higher than the whole sweep
    in one process (at 10^5 images, docs/benchmarks.md). The fitted heads come back packed
    and stay so until used (:class:`~pipeline.heads.kind.FittedHead`): this process never
    loads their runtime unless one of them is tested or saved unpacked. A child that dies
    fails its trial and every later one, with the end of what it wrote to standard error."""
    if not trials:
        return
    # the child finds this package (and anything the trials' kinds import) where this
    # process does, and not another one in the folder it runs in (PYTHONSAFEPATH: -m would
    # put that folder first)
    env = {**os.environ, "PYTHONSAFEPATH": "1",
           "PYTHONPATH": os.pathsep.join(path for path in sys.path
                                         if isinstance(path, str) and path)}
    # glibc gives each of TensorFlow's threads a malloc arena of its own, and what they free
    # stays in them: a streamed dense head at 10^5 images grew 7 MiB an epoch (1,036 to
    # 1,114 MiB over 12 epochs), with two arenas it stays at 1,044-1,065 MiB, as fast
    env.setdefault("MALLOC_ARENA_MAX", "2")
    with tempfile.TemporaryFile() as stderr_file, subprocess.Popen(
            CHILD_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr_file,
            env=env) as child:
        finished = False
        try:
            # a child that ended already leaves the pipe broken; its first result says how
            with contextlib.suppress(BrokenPipeError):
                budget = min(data.memory_budget or APART_MEMORY_BUDGET, APART_MEMORY_BUDGET)
                pickle.dump((replace(data, stream_all=True, memory_budget=budget), trials),
                            child.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            with contextlib.suppress(BrokenPipeError):
                child.stdin.close()
            for next_trial in range(len(trials)):
                try:
                    yield pickle.load(child.stdout)
                except (EOFError, pickle.UnpicklingError):
                    reason = _child_end(child, stderr_file)
                    for trial in trials[next_trial:]:
                        yield _failed_apart(trial, reason)
                    break
            finished = True
        finally:
            if not finished and child.poll() is None:
                child.kill()  # interrupted, or its caller stopped early: not left fitting


def _child_end(child: subprocess.Popen, stderr_file: IO[bytes]) -> str:
    """How the child ended: its exit status or signal, and its last lines on stderr."""
    code = child.wait()
    stderr_file.seek(max(0, stderr_file.seek(0, os.SEEK_END) - 4096))
    lines = [line for line in stderr_file.read().decode(errors="replace").splitlines()
             if line.strip()]
    said = " ".join(" ".join(lines[-3:]).split()) or "it wrote nothing on standard error"
    if code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
        if code == -signal.SIGKILL:
            how += " (out of memory?)"
    else:
        how = f"exit status {code}"
    return f"{how}: {said}"


def _failed_apart(trial: Trial, reason: str) -> tuple[TrialResult, None]:
    """``trial``'s result when the child fitting it ended before sending it."""
    error = (f"ChildProcessError: the process fitting this trial apart ended before its "
             f"result ({reason})")
    return TrialResult(trial.head, trial.index, trial.kind.name, trial.describe(),
                       status="failed", error=error[:500]), None


def _run_on_cluster(client, trials: list[Trial], data: TrainingData, metric: str,
                    bar) -> SweepOutcome:
    from distributed import as_completed

    # Once per worker, not once per trial: the rows' keys and labels (and the features only
    # where they are carried); each worker reads from the cache what its trials use.
    [shared] = client.scatter([data], broadcast=True)
    # Each trial is two tasks: the fit, whose (result, model) stays on its worker, and a tiny
    # one that brings back only the result. Models travel only when they are a head's best.
    fitted, rows = {}, {}
    for order, trial in enumerate(trials):
        tag = f"{trial.head}-{trial.index}-{os.urandom(4).hex()}"
        fitted[order] = client.submit(fit_and_score, trial, shared, pure=False,
                                      priority=trial.expected_cost, key=f"trial-{tag}")
        rows[client.submit(itemgetter(0), fitted[order], key=f"row-{tag}")] = order
    keeper = _BestPerHead(metric)
    results: list[TrialResult | None] = [None] * len(trials)
    for future in as_completed(rows):
        order = rows[future]
        try:
            results[order] = future.result()
        except Exception as exc:  # noqa: BLE001 (a worker died: record it, keep the others)
            trial = trials[order]
            results[order] = TrialResult(trial.head, trial.index, trial.kind.name,
                                         trial.describe(), status="failed",
                                         error=f"{type(exc).__name__}: {exc}"[:500])
        let_go = keeper.offer(order, results[order], fitted[order])
        if let_go is not None:
            let_go.release()  # frees the model on its worker
        bar.update()
    models = {head: client.submit(itemgetter(1), pair).result()
              for head, pair in keeper.kept().items()}
    return SweepOutcome([r for r in results if r is not None], models)
