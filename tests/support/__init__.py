"""What the tests and the benchmarks share, importable as ``tests.support``: tiny generated
projects and caches (:mod:`~tests.support.projects`), a paused extraction in a child process
(:mod:`~tests.support.processes`), and the corpus of awkward files
(:mod:`~tests.support.bad_inputs`)."""
