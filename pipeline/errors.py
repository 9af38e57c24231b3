"""Errors and warnings the pipeline raises on purpose.

Errors derive from :class:`PipelineError`; the CLI prints their message as one line on stderr
and exits non-zero. Warnings are named classes so that users and tests can filter them.
"""

from __future__ import annotations


class PipelineError(Exception):
    """A failure the user can act on; the message says what and where."""


class ConfigError(PipelineError):
    """stages.yaml (or a --set override) is invalid; raised before any work starts."""


class DataError(PipelineError):
    """The data folder cannot be used as a labelled image folder."""


class BackboneWeightsError(PipelineError):
    """The backbone's weights cannot be found, downloaded or loaded."""


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
