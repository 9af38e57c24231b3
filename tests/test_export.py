"""pipeline export: a split's cached features to Parquet or .npz, streamed, and read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cache import FeatureStore
from pipeline import Project
from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.export import export_features
from tests.support.projects import make_image_folder, tiny_document, write_config

TAPS = "backbone.taps=[block3_conv3.gap, block4_conv3.gmp]"
PARTS = ["block4_conv3.gmp", "block3_conv3.gap"]


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> Project:
    root = tmp_path_factory.mktemp("export")
    make_image_folder(root / "data", {"cats": 7, "dogs": 7, "owls": 6})
    write_config(root, tiny_document())
    project = Project(root / "stages.yaml", overrides=[TAPS])
    project.extract()
    return project


def _read(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    import pyarrow.parquet as pq
    table = pq.read_table(path)
    columns = {name: np.asarray(table[name].to_pylist()) for name in
               ("path", "sha256", "label", "label_index")}
    features = table["features"].combine_chunks()
    width = features.type.list_size
    columns["features"] = features.values.to_numpy().reshape(-1, width)
    return columns


@pytest.mark.parametrize("suffix", [".parquet", ".npz"])
def test_the_export_round_trips_rows_values_and_labels_in_chunks(extracted: Project,
                                                                  tmp_path: Path, suffix: str,
                                                                  monkeypatch):
    reads = []
    get = FeatureStore.get

    def counting(store, keys):
        reads.append(len(keys))
        return get(store, keys)

    monkeypatch.setattr(FeatureStore, "get", counting)
    output = tmp_path / f"train{suffix}"
    result = export_features(extracted.context, "train", output, PARTS, "power", chunk_rows=4)
    monkeypatch.undo()
    table = extracted.dataset()
    train = table[table["split"] == "train"]
    X, y = extracted.features("train", parts=PARTS, normalize="power")
    assert result.rows == len(train) > 4 and result.width == 512 + 256
    assert max(reads) == 4  # never more than a chunk of rows in memory, per part
    back = _read(output)
    assert back["features"].dtype == np.float32 and back["features"].shape == X.shape
    np.testing.assert_array_equal(back["features"], X)
    np.testing.assert_array_equal(back["label_index"], y)
    assert list(back["path"]) == list(train["path"])
    assert list(back["sha256"]) == list(train["sha256"])
    assert list(back["label"]) == list(train["label"])
    if suffix == ".npz":
        assert list(back["classes"]) == extracted.classes
    assert not list(tmp_path.glob("*.tmp*"))  # written under a temporary name, then renamed


def test_the_command_writes_a_split_and_refuses_an_unknown_suffix(extracted: Project,
                                                                  tmp_path: Path, capsys):
    config = ["-c", str(extracted.config.source), "--set", TAPS]
    output = tmp_path / "out" / "validation.parquet"
    assert main(["export", "--split", "validation", "-o", str(output), "--parts",
                 "block3_conv3.gap", "--normalize", "l2", *config]) == 0
    assert f"-> {output}" in capsys.readouterr().out
    back = _read(output)
    X, _ = extracted.features("validation", parts="block3_conv3.gap", normalize="l2")
    np.testing.assert_array_equal(back["features"], X)
    with pytest.raises(PipelineError, match="use .parquet or .npz"):
        extracted.export(tmp_path / "train.csv")
    assert main(["export", "-o", str(tmp_path / "train.csv"), *config]) != 0
    assert not (tmp_path / "train.csv").exists()
