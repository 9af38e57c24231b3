"""The runner: stages planned after what they need, skipped while up to date, recorded.

- :mod:`~pipeline.runner.registry`: the declared stages, in pipeline order;
- :mod:`~pipeline.runner.plan`: the plan of a ``pipeline run``, each stage's state against
  ``pipeline.lock``, and ``pipeline status``;
- :mod:`~pipeline.runner.execute`: running the plan in one run folder;
- :mod:`~pipeline.runner.lock`: ``pipeline.lock``, updated under a file lock.
"""
