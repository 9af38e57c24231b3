"""Every error and warning the pipeline raises on purpose.

Errors derive from :class:`PipelineError`; the CLI prints their message as one line on stderr
and exits non-zero. Warnings derive from :class:`PipelineWarning`, named classes that users and
tests can filter. (The cache's own errors are in :mod:`cache.errors`.)
"""

from __future__ import annotations


class PipelineError(Exception):
    """A failure the user can act on; the message says what and where."""


class ConfigError(PipelineError):
    """stages.yaml (or a --set override) is invalid; raised before any work starts."""


class DataError(PipelineError):
    """The data folder cannot be used as a labelled image folder."""


class ImageDecodeError(PipelineError):
    """A file cannot be turned into an image; ``str(error)`` is the reason for the user.

    ``permanent`` says whether the failure is a property of the bytes (empty, not an image,
    truncated, too large), so that trying the same bytes again is pointless; a file that was
    unreadable or changed while being read may well work next time.
    """

    def __init__(self, reason: str, permanent: bool = True):
        super().__init__(reason)
        self.permanent = permanent


class BackboneWeightsError(PipelineError):
    """The backbone's weights cannot be found, downloaded or loaded."""


class MissingViewError(PipelineError):
    """No dataset view, or the view's features are not (all) in the cache: extract first."""


class ModelLoadError(PipelineError):
    """A saved model is missing, damaged, or asks to run code or build types not trusted."""


class HeadLoadError(ModelLoadError):
    """A head folder is missing, damaged, or names types that are not trusted."""


class WarmStartError(PipelineError):
    """The head named by ``finetune.head_from`` does not fit this backbone or these classes."""


class SchedulerUnreachableError(PipelineError):
    """The dask scheduler of cluster.scheduler is not a valid address or did not answer."""


class NoSuitableWorkerError(PipelineError):
    """The scheduler has no worker that can run an extraction partition."""


class WorkerMismatchError(PipelineError):
    """A worker computes another backbone fingerprint than the client (other weights file,
    Keras release or input size on that machine): its features would not match the cache."""


class BackendError(PipelineError):
    """Work this process's Keras backend cannot do, or a backend the pipeline does not run on."""


class DamagedCacheError(PipelineError):
    """``cache verify`` found damaged entries (listed; the next extract recomputes them)."""


class PipelineWarning(UserWarning):
    """Base class of the pipeline's named warnings."""


class SkippedImageWarning(PipelineWarning):
    """An image file could not be read or decoded and was left out; the run goes on."""


class DuplicateImageWarning(PipelineWarning):
    """The same image bytes appear under two classes (conflicting labels)."""


class LeakageWarning(PipelineWarning):
    """The same image bytes appear in two splits, so evaluation would see training images."""


class EmptyClassWarning(PipelineWarning):
    """A class folder has no usable image, or a split has no image of some class."""


class NoTestImagesWarning(PipelineWarning):
    """The test split is empty, so models are trained and selected but not tested."""


class MultiThreadedWorkersWarning(PipelineWarning):
    """Workers of the scheduler run several threads: trials in one process share warnings
    capture and compete for cores; start them with ``--nthreads 1``."""


class RenamedKeyWarning(PipelineWarning):
    """stages.yaml (or a ``--set``) uses a key under its old name: it still works, read as the
    new name, until a later release drops the old one; rename it."""


class MissingImageWarning(SkippedImageWarning):
    """Files that the labels table (``data.labels``) lists do not exist under ``data.root``:
    they are left out (listed in the run's skipped.csv) and the run goes on. One warning names
    the first few and the count; a table none of whose files exist is a DataError instead."""
