"""The dataset view's images as columns: packed strings and the image table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cache.files import sha256_text
from pipeline.data import view as view_module
from pipeline.data.columns import PackedStrings
from pipeline.data.table import ImageTable, ViewImage
from pipeline.data.view import DatasetView, read_view, view_digest, write_view

# any text a file name can hold, lone surrogates (non-UTF-8 names) included
NAMES = st.text(st.characters(blacklist_categories=("Cs",)) | st.sampled_from("\udcff\udc80"),
                max_size=12)


@given(st.lists(NAMES, max_size=30), st.data())
def test_packed_strings_give_back_every_string_and_any_selection_of_them(strings, data):
    packed = PackedStrings.of(strings)
    assert len(packed) == len(strings) and packed.tolist() == strings == list(packed)
    assert [packed[i] for i in range(-len(strings), len(strings))] == strings + strings
    positions = data.draw(st.lists(st.integers(0, max(len(strings) - 1, 0)),
                                   max_size=10 if strings else 0))
    assert packed.take(np.array(positions, np.int64)).tolist() == [strings[i] for i in positions]
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=len(strings),
                                       max_size=len(strings))), bool)
    assert packed.compress(mask).tolist() == [s for s, kept in zip(strings, mask) if kept]
    assert packed.tolist(1, 3) == strings[1:3]


def test_packed_strings_refuse_an_index_past_the_end_and_bad_offsets():
    packed = PackedStrings.of(["a", "bc"])
    with pytest.raises(IndexError):
        packed[2]
    with pytest.raises(IndexError):
        packed[-3]
    with pytest.raises(ValueError, match="ends must run from 0"):
        PackedStrings(packed.data, packed.ends[:-1])


CLASSES = ["cat", "dog", "owl"]
ROWS = [ViewImage("dog/a.png", "dog", "train", "a" * 64),
        ViewImage("cat/b \udcff.png", "cat", "test", "b" * 64),
        ViewImage("owl/ü.png", "owl", "validation", "c" * 64),
        ViewImage("cat/d.png", "cat", "train", "a" * 64)]


def test_an_image_table_is_a_sequence_of_view_images_over_numpy_columns():
    table = ImageTable.from_rows(CLASSES, ROWS)
    assert list(table) == ROWS and len(table) == 4 and table[1] == ROWS[1] == table[-3]
    assert table.label.dtype == np.int32 and table.split.dtype == np.int8
    assert table.sha256.dtype == np.dtype("S64")
    assert table.label.tolist() == [1, 0, 2, 0]  # class indices: what heads predict
    assert table.keys() == [r.sha256 for r in ROWS]
    assert table.label_names() == [r.label for r in ROWS]
    assert table.split_names() == [r.split for r in ROWS]
    assert list(table.in_split("train")) == [ROWS[0], ROWS[3]]
    assert list(table[np.array([2, 0])]) == [ROWS[2], ROWS[0]] and list(table[1:2]) == [ROWS[1]]
    assert list(table[np.array([False, True, True, False])]) == ROWS[1:3]
    assert table.counts().tolist() == [[1, 1, 0], [0, 0, 1], [1, 0, 0]]
    assert table == ImageTable.from_rows(CLASSES, ROWS) != table[:3]
    with pytest.raises(IndexError):
        table[4]
    with pytest.raises(IndexError, match="a mask of 3 for 4 images"):
        table[np.ones(3, bool)]
    with pytest.raises(ValueError, match="unknown split 'val'"):
        table.in_split("val")


def test_an_image_table_refuses_unknown_labels_and_splits():
    with pytest.raises(ValueError, match="label 'bat' is not one of the classes"):
        ImageTable.from_rows(CLASSES, [ViewImage("x.png", "bat", "train", "a" * 64)])
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        ImageTable.from_rows(CLASSES, [ViewImage("x.png", "cat", "dev", "a" * 64)])


def test_a_view_file_is_written_as_before_the_table_and_read_back_into_it(tmp_path):
    view = DatasetView(root="/data", classes=CLASSES, fingerprint="f" * 16, images=ROWS)
    assert isinstance(view.images, ImageTable)
    assert view.counts() == {"train": {"cat": 1, "dog": 1, "owl": 0},
                             "validation": {"cat": 0, "dog": 0, "owl": 1},
                             "test": {"cat": 1, "dog": 0, "owl": 0}}
    path = tmp_path / "view.json"
    write_view(view, path)
    # one object an image, as views were written before the table: their digests hold
    assert json.loads(path.read_text())["images"] == [image._asdict() for image in ROWS]
    again = read_view(path)
    assert again == view and list(again.images) == ROWS
    assert view_digest(path) == (tmp_path / "view.digest").read_text().strip()
    with pytest.raises(ValueError, match="classes are not the view's"):
        DatasetView(root="/data", classes=CLASSES[:2], fingerprint="f", images=view.images)


def test_an_image_table_holds_no_python_object_an_image():
    count = 20_000
    rows = [ViewImage(f"class{i % 3}/img{i:07d}.jpg", CLASSES[i % 3], "train",
                      f"{i:064x}") for i in range(count)]
    table = ImageTable.from_rows(CLASSES, rows)
    # its columns: 4 numpy arrays and a tuple of class names, whatever the count
    arrays = [table.path.data, table.path.ends, table.label, table.split, table.sha256]
    assert all(isinstance(a, np.ndarray) and a.dtype != object for a in arrays)
    # ~100 bytes an image, where the rows' objects take several hundred
    assert sum(a.nbytes for a in arrays) < 110 * count


@pytest.mark.parametrize("rows", [ROWS, ROWS + ROWS[:1], []])
def test_a_view_is_written_a_chunk_of_images_at_a_time_as_one_canonical_text(
        tmp_path, monkeypatch, rows):
    monkeypatch.setattr(view_module, "_ROWS_WRITTEN", 2)
    view = DatasetView(root="/data", classes=CLASSES, fingerprint="f" * 16, images=rows,
                       labels="t.csv")
    path = tmp_path / "view.json"
    write_view(view, path)
    payload = view.to_json()
    created = payload.pop("created")
    # the text the view was written as before the table: every digest recorded of a view
    # (locks, digest files) still names the same content
    canonical = json.dumps(payload, sort_keys=True, default=str)
    assert path.read_text(encoding="ascii") == \
        canonical[:-1] + f', "created": {json.dumps(created)}}}'
    assert view_digest(path) == sha256_text(canonical)
    assert read_view(path) == view
