"""Labels and splits from a table (``data.labels``): the CSV contract, its errors and warnings,
the view id, and extract going stale when the table changes."""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path

import pytest

from pipeline.config import PipelineConfig, load_config
from pipeline.data.scan import scan_dataset, split_for, warn_about
from pipeline.data.view import DatasetView, read_view, view_id
from pipeline.errors import (
    ConfigError,
    DataError,
    DuplicateImageWarning,
    LeakageWarning,
    MissingImageWarning,
    SkippedImageWarning,
)
from tests.support.projects import context, make_image_folder, tiny_document, write_config

HEADER = "path,label,split\n"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """data/cats/img_00..03.png and data/dogs/img_00..03.png (distinct noise images), and a
    stages.yaml that reads labels from labels.csv beside it."""
    make_image_folder(tmp_path / "data", {"cats": 4, "dogs": 4})
    document = tiny_document()
    document["data"]["labels"] = "labels.csv"
    write_config(tmp_path, document)
    (tmp_path / "labels.csv").write_text(HEADER + "cats/img_00.png,cat,train\n",
                                         encoding="utf-8")
    return tmp_path


def _scan(project: Path, table: str | bytes | None = None, name: str = "labels.csv"):
    if isinstance(table, str):
        (project / name).write_text(table, encoding="utf-8")
    elif isinstance(table, bytes):
        (project / name).write_bytes(table)
    return scan_dataset(load_config(project / "stages.yaml").data)


def _error(project: Path, table: str | bytes) -> str:
    with pytest.raises(DataError) as caught:
        _scan(project, table)
    return str(caught.value)


# --- the table read right ------------------------------------------------------------------

def test_labels_and_explicit_splits_come_from_the_table_and_blank_splits_from_the_hash(
        project: Path):
    scan = _scan(project, HEADER
                 + "cats/img_00.png,cat,train\n"
                 + "cats/img_01.png,cat,validation\n"
                 + "dogs/img_00.png,dog,test\n"
                 + "dogs/img_01.png,dog,\n"       # blank: the seeded hash split
                 + "cats/img_02.png,dog,\n")      # the table's label, not the folder's
    config = load_config(project / "stages.yaml")
    assert scan.classes == ["cat", "dog"]
    assert scan.labels == project / "labels.csv" and not scan.split_folders
    rows = [(i.relpath, i.label, i.split) for i in scan.images]
    assert rows[:3] == [("cats/img_00.png", "cat", "train"),
                        ("cats/img_01.png", "cat", "validation"),
                        ("dogs/img_00.png", "dog", "test")]   # table order
    split = config.data.split
    for image in scan.images[3:]:
        assert image.split == split_for(image.sha256, (split.train, split.validation,
                                                       split.test), split.seed)
    assert [i.label for i in scan.images[3:]] == ["dog", "dog"]
    # images under the root that the table does not list are not in the dataset
    assert len(scan.images) == 5 and not scan.unreadable and not scan.missing


def test_blank_splits_follow_the_split_fractions_so_a_table_can_fix_only_its_test_rows(
        project: Path):
    document = tiny_document()
    document["data"].update(labels="labels.csv",
                            split={"train": 0.5, "validation": 0.5, "test": 0.0, "seed": 7})
    write_config(project, document)
    table = HEADER + "cats/img_00.png,cat,test\ndogs/img_00.png,dog,test\n" + "".join(
        f"{c}s/img_0{i}.png,{c},\n" for c in ("cat", "dog") for i in (1, 2, 3))
    scan = _scan(project, table)
    assert [i.split for i in scan.images[:2]] == ["test", "test"]
    assert {i.split for i in scan.images[2:]} <= {"train", "validation"}


def test_paths_may_go_through_subfolders_and_are_normalised(project: Path):
    make_image_folder(project / "data" / "deep" / "er", {"x": 1}, start_seed=90)
    scan = _scan(project, HEADER + "./deep//er/x/img_00.png,cat,train\n"
                 + "dogs/img_00.png,dog,train\n")
    assert [i.relpath for i in scan.images] == ["deep/er/x/img_00.png", "dogs/img_00.png"]
    assert scan.images[0].path == str(project / "data" / "deep" / "er" / "x" / "img_00.png")


def test_the_split_column_is_optional_and_csv_conventions_hold(project: Path):
    # a byte-order mark (Excel), CRLF line ends, spaces around cells, a quoted name with a
    # comma, blank lines and rows of empty cells, a short row, columns in any order
    (project / "data" / "odd").mkdir()
    (project / "data" / "odd" / "a, b.png").write_bytes(
        (project / "data" / "cats" / "img_03.png").read_bytes())
    table = ("\ufeff label , path \r\n\r\n"
             ' cat ,"odd/a, b.png"\r\n'
             "dog,dogs/img_00.png\r\n"
             ",\r\n"
             "cat,cats/img_00.png\r\n")
    scan = _scan(project, table)
    assert [(i.relpath, i.label) for i in scan.images] == [
        ("odd/a, b.png", "cat"), ("dogs/img_00.png", "dog"), ("cats/img_00.png", "cat")]
    assert _scan(project, HEADER + "cats/img_00.png,cat\n").images[0].split in (
        "train", "validation", "test")  # a short row: its split is blank
    scan = _scan(project, "path,label,\ncats/img_00.png,cat,\ndogs/img_00.png,dog,,\n")
    assert [i.label for i in scan.images] == ["cat", "dog"]  # trailing commas are harmless


def test_a_table_outside_the_data_root_is_read_relative_to_stages_yaml(tmp_path: Path):
    make_image_folder(tmp_path / "images", {"a": 2})
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "labels.csv").write_text(
        "path,label\na/img_00.png,first\na/img_01.png,second\n", encoding="utf-8")
    (tmp_path / "conf").mkdir()
    document = tiny_document()
    document["data"].update(root="../images", labels="../meta/labels.csv")
    write_config(tmp_path / "conf", document)
    config = load_config(tmp_path / "conf" / "stages.yaml")
    assert config.data.labels == tmp_path / "meta" / "labels.csv"
    scan = scan_dataset(config.data)
    assert scan.classes == ["first", "second"]
    assert [i.path for i in scan.images] == [str(tmp_path / "images" / "a" / "img_00.png"),
                                             str(tmp_path / "images" / "a" / "img_01.png")]


def test_copies_listed_twice_are_leakage_or_conflicting_labels(project: Path):
    same = (project / "data" / "cats" / "img_00.png").read_bytes()
    for name in ("copy1.png", "copy2.png"):
        (project / "data" / name).write_bytes(same)
    scan = _scan(project, HEADER + "cats/img_00.png,cat,train\ncopy1.png,cat,test\n"
                 + "copy2.png,dog,train\n")
    (group,) = scan.duplicates
    assert group.paths == ("cats/img_00.png", "copy1.png", "copy2.png")
    assert group.kind == "leakage"
    with pytest.warns(LeakageWarning, match="copy1.png"):
        warn_about(scan)
    scan = _scan(project, HEADER + "cats/img_00.png,cat,train\ncopy2.png,dog,train\n")
    assert scan.duplicates[0].kind == "conflicting-labels"
    with pytest.warns(DuplicateImageWarning, match="under classes cat, dog"):
        warn_about(scan)


# --- files that are not there --------------------------------------------------------------

def test_missing_files_are_left_out_with_one_named_warning(project: Path):
    scan = _scan(project, HEADER + "cats/img_00.png,cat,train\n"
                 + "cats/gone.png,cat,train\n"
                 + "dogs/img_00.png,dog,test\n"
                 + "nowhere/x.png,dog,\n"
                 + "cats/img_01.png/inside.png,cat,\n")   # a file used as a folder
    assert [i.relpath for i in scan.images] == ["cats/img_00.png", "dogs/img_00.png"]
    assert [(m.relpath, m.line) for m in scan.missing] == [
        ("cats/gone.png", 3), ("nowhere/x.png", 5), ("cats/img_01.png/inside.png", 6)]
    assert scan.missing[0].reason == "no such file (line 3 of labels.csv)"
    assert not scan.unreadable
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_about(scan)
    (warning,) = caught
    assert warning.category is MissingImageWarning
    assert issubclass(MissingImageWarning, SkippedImageWarning)
    assert "3 listed file(s) do not exist" in str(warning.message)
    assert "line 3 cats/gone.png, line 5 nowhere/x.png" in str(warning.message)


def test_a_table_none_of_whose_files_exist_is_an_error(project: Path):
    message = _error(project, HEADER + "img_00.png,cat,\nimg_01.png,dog,\n")
    assert "labels.csv: none of the 2 files it lists exists" in message
    assert "relative to data.root" in message and "line 2 img_00.png, line 3 img_01.png" in message


def test_a_listed_folder_is_unreadable_not_missing(project: Path):
    scan = _scan(project, HEADER + "cats,cat,\ndogs/img_00.png,dog,\n")
    assert [(u.relpath, u.reason) for u in scan.unreadable] == [("cats", "not a regular file")]


# --- errors: the header --------------------------------------------------------------------

def test_a_table_without_a_header_is_an_error(project: Path):
    message = _error(project, "cats/img_00.png,cat,train\n")
    assert message.startswith(f"{project / 'labels.csv'} line 1: no path or label column")
    assert "the first line must be the header row" in message
    assert "allowed columns: path, label (required), split (optional)" in message
    assert "no header row" in _error(project, "\n\n")


def test_unknown_columns_are_named_with_the_allowed_ones(project: Path):
    message = _error(project, "path,,label,split,weight,\ncats/img_00.png,,cat,train,1,\n")
    assert "line 1: unknown column(s) '' (an empty column name), 'weight';" in message
    assert "allowed columns: path, label (required), split (optional)" in message
    assert "'Label' (did you mean label?)" in _error(project, "path,Label\na.png,x\n")
    assert "(cells are separated by commas, not ';' or tabs)" in \
        _error(project, "path;label\na.png;x\n")


def test_a_missing_label_column_or_a_column_named_twice_is_an_error(project: Path):
    assert "line 1: no label column;" in _error(project, "path,split\na.png,train\n")
    assert "column(s) named twice: path" in _error(project, "path,label,path\na,b,c\n")


def test_a_table_with_no_rows_is_an_error(project: Path):
    assert "no rows below the header" in _error(project, HEADER + "\n,,\n")


def test_a_table_that_is_not_utf8_names_the_line(project: Path):
    message = _error(project, b"path,label\ncats/img_00.png,cat\ncats/img_01.png,ch\xe8vre\n")
    assert "labels.csv line 3: not UTF-8 text" in message


# --- errors: the rows ----------------------------------------------------------------------

@pytest.mark.parametrize("row, expected", [
    (",cat,train", "1 row(s) with an empty path: line 3 (no path)"),
    ("./,cat,train", "1 row(s) with an empty path: line 3 ./"),
    ("/etc/passwd,cat,train", "1 row(s) with a path outside data.root (absolute, or with a "
                              "'..' component): line 3 /etc/passwd"),
    ("cats/../../x.png,cat,train", "path outside data.root (absolute, or with a '..' "
                                   "component): line 3 cats/../../x.png"),
    ("cats\\img_01.png,cat,train", "1 row(s) with a backslash in the path (paths are "
                                   "'/'-separated): line 3 cats\\\\img_01.png"),
    ("cats/img_01.png, ,train", "1 row(s) with an empty label: line 3 cats/img_01.png"),
    ('cats/img_01.png,"ca\nt",train', "1 row(s) with a label with a control character (a line "
                                       "break, a tab, NUL): line 3 cats/img_01.png: 'ca\\nt'"),
    ("cats/img_01.png,cat,val", "1 row(s) with an unknown split (allowed: train, validation, "
                                "test, or blank for the hash split of data.split): line 3 "
                                "cats/img_01.png: 'val'"),
    ("cats/img_01.png,cat,train,extra", "1 row(s) with more cells than the header has columns "
                                        "(quote a cell that holds a comma): line 3 "
                                        "cats/img_01.png (4 cells)"),
    ("./cats//img_00.png,dog,test", "1 row(s) with a path listed on an earlier row (a file has "
                                    "one row): line 3 ./cats//img_00.png (also line 2)"),
])
def test_each_bad_row_is_an_error_naming_its_line(project: Path, row: str, expected: str):
    message = _error(project, HEADER + "cats/img_00.png,cat,train\n" + row + "\n")
    assert message.startswith(f"{project / 'labels.csv'}: 1 row(s) cannot be used\n")
    assert expected in message


def test_every_problem_of_the_table_is_in_one_error_with_counts_and_the_first_rows(
        project: Path):
    rows = ["cats/img_00.png,cat,train"] + [f"x{i}.png,,train" for i in range(7)] + [
        "cats/img_00.png,cat,train", "a.png,cat,nope"]
    message = _error(project, HEADER + "\n".join(rows) + "\n")
    lines = message.splitlines()
    assert lines[0].endswith("labels.csv: 9 row(s) cannot be used")
    assert lines[1] == ("7 row(s) with an empty label: line 3 x0.png, line 4 x1.png, line 5 "
                        "x2.png, line 6 x3.png, line 7 x4.png and 2 more")
    assert lines[2].startswith("1 row(s) with an unknown split") and "line 11 a.png" in lines[2]
    assert lines[3].endswith("line 10 cats/img_00.png (also line 2)")


def test_line_numbers_count_quoted_cells_that_span_lines(project: Path):
    message = _error(project, HEADER + '"cats/img_00.png",cat,"train"\n'
                     + 'cats/img_01.png,"two\nlines",train\n' + "cats/img_02.png,,\n")
    assert "empty label: line 5 cats/img_02.png" in message


# --- configuration -------------------------------------------------------------------------

def test_the_labels_file_must_exist_and_be_a_file(project: Path):
    (project / "labels.csv").unlink()
    with pytest.raises(ConfigError, match=r"data\.labels: labels file does not exist: .*"
                                          r"labels\.csv"):
        load_config(project / "stages.yaml")
    with pytest.raises(ConfigError, match=r"data\.labels.*: not a file"):
        load_config(project / "stages.yaml", ["data.labels=data"])
    assert load_config(project / "stages.yaml", ["data.labels=null"]).data.labels is None


# --- view ids and the extract stage --------------------------------------------------------

def test_view_ids_of_the_folder_layouts_are_those_of_earlier_releases(tmp_path: Path):
    def config(**data) -> PipelineConfig:
        return PipelineConfig.model_validate({"data": {"root": "/tmp", **data}},
                                             context={"base_dir": tmp_path})

    # computed by the release before labels tables existed
    assert view_id(config()) == "3e237478abc72e07"
    assert view_id(config(split={"train": 0.8, "validation": 0.1, "test": 0.1,
                                 "seed": 3})) == "b4aab260809f6161"
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_text(HEADER, encoding="utf-8")
    ids = {view_id(config(labels=name)) for name in ("a.csv", "b.csv")}
    assert len(ids) == 2 and "3e237478abc72e07" not in ids


def test_views_and_data_listings_of_the_folder_layouts_are_unchanged(tiny_project: Path):
    from pipeline.stage import DATA_FOLDER
    ctx = context(tiny_project)
    assert set(DATA_FOLDER.value(ctx, {})) == {"files", "hash"}  # what older locks recorded
    view = DatasetView(root="r", classes=["a"], fingerprint="f", images=[])
    assert "labels" not in view.to_json()
    labelled = DatasetView(root="r", classes=["a"], fingerprint="f", images=[], labels="t.csv")
    assert DatasetView.from_json(labelled.to_json()).labels == "t.csv"


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    from pipeline.cli import main
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _status(capsys, config_file: str) -> dict[str, str]:
    code, out, err = _cli(capsys, "status", "-c", config_file)
    assert code == 0, err
    return dict(line.split(": ", 1) for line in out.strip().splitlines())


def test_editing_the_table_outside_the_root_makes_extract_stale_and_changes_the_view(
        tmp_path: Path, capsys):
    make_image_folder(tmp_path / "data", {"cats": 2, "dogs": 2})
    (tmp_path / "tables").mkdir()
    table = tmp_path / "tables" / "labels.csv"
    rows = ["path,label,split", "cats/img_00.png,cat,train", "cats/img_01.png,cat,validation",
            "dogs/img_00.png,dog,train", "dogs/img_01.png,dog,validation", "gone.png,dog,test"]
    table.write_text("\n".join(rows) + "\n", encoding="utf-8")
    document = tiny_document()
    document["data"]["labels"] = "tables/labels.csv"
    config_file = str(write_config(tmp_path, document))

    code, out, err = _cli(capsys, "run", "extract", "-c", config_file, "--no-progress")
    assert code == 3, err  # finished, but a listed file was left out
    assert "extract: 4 new" in out
    # one named warning for the missing files, no SkippedImageWarning repeating it
    assert err.count("warning: MissingImageWarning: ") == 1 and "line 6 gone.png" in err
    assert "SkippedImageWarning" not in err
    (run_folder,) = (tmp_path / "runs").iterdir()
    with open(run_folder / "skipped.csv", newline="", encoding="utf-8") as fh:
        assert list(csv.DictReader(fh)) == [
            {"path": "gone.png", "sha256": "", "reason": "no such file (line 6 of labels.csv)"}]
    ctx = context(tmp_path)
    before = read_view(ctx.view_file)
    assert before.labels == str(table)
    assert [(i.path, i.label) for i in before.images][2] == ("dogs/img_00.png", "dog")
    assert _status(capsys, config_file)["extract"].startswith("up to date")

    # relabel one row: same size, and (on a coarse clock) perhaps the same mtime
    stat = table.stat()
    table.write_text("\n".join(rows).replace("dogs/img_00.png,dog", "dogs/img_00.png,cat")
                     + "\n", encoding="utf-8")
    assert table.stat().st_size == stat.st_size
    os.utime(table, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _status(capsys, config_file)["extract"] == "stale: labels table changed (data.labels)"

    code, out, err = _cli(capsys, "run", "extract", "-c", config_file, "--no-progress")
    assert code == 3, err
    assert "extract: 0 new, 4 cached" in out  # relabelling costs no inference
    after = read_view(ctx.view_file)   # the same view id, rewritten
    assert [(i.path, i.label) for i in after.images][2] == ("dogs/img_00.png", "cat")
    assert json.loads(ctx.view_file.read_text())["labels"] == str(table)
    assert _status(capsys, config_file)["extract"].startswith("up to date")
