"""Importing a library with some of its optional dependencies marked absent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.optional_imports import modules_marked_absent


def test_a_module_marked_absent_fails_to_import_only_within_the_block(tmp_path: Path,
                                                                      monkeypatch):
    (tmp_path / "demo_optional_dep.py").write_text("VALUE = 1\n")
    (tmp_path / "demo_library.py").write_text(
        "try:\n    import demo_optional_dep\nexcept ImportError:\n    demo_optional_dep = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("demo_optional_dep", "demo_library"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with modules_marked_absent(["demo_optional_dep", "json"]):
        import demo_library
        with pytest.raises(ImportError):
            import demo_optional_dep  # noqa: F401
        import json  # imported before the block: left alone
    assert demo_library.demo_optional_dep is None
    assert "demo_optional_dep" not in sys.modules and json.dumps([]) == "[]"
    import demo_optional_dep
    assert demo_optional_dep.VALUE == 1


def test_the_heads_and_keras_import_without_pandas_and_still_take_dataframes():
    code = ("import sys\n"
            "import pipeline.heads.run, pipeline.heads.sweep, pipeline.heads._sklearn\n"
            "from pipeline.nn.runtime import keras\n"
            "print(sorted({'pandas', 'pyarrow'} & set(sys.modules)))\n"
            "import pandas\n"
            "from sklearn.preprocessing import StandardScaler\n"
            "scaled = StandardScaler().set_output(transform='pandas').fit_transform(\n"
            "    pandas.DataFrame({'a': [1.0, 3.0]}))\n"
            "print(type(scaled).__name__, list(scaled['a']))\n"
            "model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])\n"
            "model.compile('sgd', 'mse')\n"
            "model.fit(scaled, pandas.Series([0.0, 1.0]), verbose=0)\n"
            "print(model.predict(scaled, verbose=0).shape)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.split("\n")[:3] == ["[]", "DataFrame [-1.0, 1.0]", "(2, 1)"]
