"""A staged pipeline: frozen VGG16 features extracted once into a content-addressed cache.

One package per stage or layer (docs/architecture.md has a line per module and the layer
order, which an import-linter contract in setup.cfg enforces):

- ``cli`` (the ``pipeline`` command) -> ``runner`` (plan, lock, run folders of a run) ->
  ``predict``, ``report``, ``cache_commands`` -> the stages ``endtoend`` (finetune, scratch),
  ``extract`` and ``heads`` -> ``stage`` (how a stage is declared), ``context`` (what a command
  resolves once), ``runs`` (run folders) -> ``backbone``, ``cluster``, ``evaluate`` -> ``nn``
  (Keras building blocks), ``data`` (images, batches, the dataset view) -> the TensorFlow-free
  ``cache`` package -> ``config`` -> ``vgg16``, ``metric_keys``, ``errors``.

The Python API is :class:`~pipeline.project.Project` (``from pipeline import Project``).
Importing ``pipeline`` does not import TensorFlow; only the modules that build or run a model
do.
"""

__version__ = "0.1.0"
__all__ = ["Project", "RunOutcome"]


def __getattr__(name: str):
    # the API on first use: `import pipeline` stays as light as the CLI's start needs
    if name in __all__:
        from . import project
        return getattr(project, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
