"""``pipeline`` commands in child processes, for tests that need a real second process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cache.faults import ENV_VAR, RELEASE_ENV_VAR

from .projects import REPO


class PausedExtraction:
    """``pipeline run extract`` in a child process, paused after its first batch."""

    def __init__(self, project: Path, *overrides: str):
        self.release = project / "release"
        env = {**os.environ, ENV_VAR: "extract.batch:1:wait",
               RELEASE_ENV_VAR: str(self.release), "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", "extract", "--no-progress",
             "-c", str(project / "stages.yaml"), *[a for o in overrides for a in ("--set", o)]],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # a shell running tests in the background ignores SIGINT, and its children inherit
            # that: give this one Python's Ctrl-C handling back
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        waiting = Path(f"{self.release}.waiting")
        deadline = time.monotonic() + 120
        while not waiting.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"the extraction did not reach its pause: "
                                     f"{self.process.communicate()}")
            time.sleep(0.05)

    def finish(self) -> tuple[int, str, str]:
        """Let it go on; its exit code, stdout and stderr."""
        self.release.touch()
        out, err = self.process.communicate(timeout=300)
        return self.process.returncode, out, err
