"""Atomic output: no overwrite without force, and a failure midway leaves nothing behind."""

from __future__ import annotations

import os
import stat
import weakref

import pytest
from formats.test_formats_rows import make_row

from labeler.errors import InputError
from labeler.formats import rows as rows_module
from labeler.formats import (
    write_coco,
    write_csv,
    write_cvat,
    write_hf,
    write_json,
    write_jsonl,
    write_label_studio,
    write_sidecar,
)
from labeler.formats.atomic import atomic_output, atomic_outputs
from labeler.formats.labelstudio import config_path


def failing_rows(root, after: int = 3):
    """Rows that end in an error, as a store whose connection drops midway would."""
    for i in range(1, after + 1):
        yield make_row(i, root=root, review_text="a red square", review_outcome="edited")
    raise RuntimeError("the store went away")


def writers(tmp_path):
    """(writer, destination, keyword options, every file it writes) for each single-dest format."""
    gt = tmp_path / "gt.json"
    tasks = tmp_path / "tasks.json"
    return [
        (write_csv, tmp_path / "a.csv", {}, [tmp_path / "a.csv"]),
        (write_jsonl, tmp_path / "a.jsonl", {}, [tmp_path / "a.jsonl"]),
        (write_json, tmp_path / "a.json", {}, [tmp_path / "a.json"]),
        (write_cvat, tmp_path / "a.xml", {}, [tmp_path / "a.xml"]),
        (write_hf, tmp_path, {}, [tmp_path / "metadata.jsonl"]),
        (write_coco, tmp_path / "res.json", {"ground_truth": gt}, [tmp_path / "res.json", gt]),
        (write_label_studio, tasks, {"url_prefix": "http://x"}, [tasks, config_path(tasks)]),
    ]


@pytest.mark.parametrize("index", range(7))
def test_failure_midway_leaves_destination_untouched_and_no_temp_file(tmp_path, index):
    writer, dest, options, files = writers(tmp_path)[index]
    for path in files:
        path.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError, match="store went away"):
        writer(failing_rows(tmp_path), dest, force=True, **options)
    assert all(path.read_text(encoding="utf-8") == "old" for path in files)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files)


@pytest.mark.parametrize("index", range(7))
def test_existing_file_needs_force(tmp_path, index):
    writer, dest, options, files = writers(tmp_path)[index]
    files[-1].write_text("old", encoding="utf-8")  # even the second file of a pair is guarded
    rows = [make_row(1, root=tmp_path, review_outcome="accepted")]
    with pytest.raises(InputError, match="already exists; use --force"):
        writer(iter(rows), dest, **options)
    assert files[-1].read_text(encoding="utf-8") == "old"
    assert all(not p.exists() for p in files[:-1])
    assert [p.name for p in tmp_path.iterdir()] == [files[-1].name]
    result = writer(iter(rows), dest, force=True, **options)
    assert result.paths == files and files[-1].read_text(encoding="utf-8") != "old"


def test_bad_destinations(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        write_csv([], tmp_path / "missing" / "a.csv")
    with pytest.raises(InputError, match="is a folder"):
        write_csv([], tmp_path)


def test_new_files_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_csv([], tmp_path / "a.csv")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.csv").stat().st_mode) == 0o644


def test_destination_appearing_during_the_write_is_not_replaced(tmp_path):
    dest = tmp_path / "a.txt"
    with pytest.raises(InputError, match="already exists"), atomic_output(dest) as out:
        out.write("new")
        dest.write_text("someone else's", encoding="utf-8")
    assert dest.read_text(encoding="utf-8") == "someone else's"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_group_renames_nothing_when_the_block_fails(tmp_path):
    first, second = tmp_path / "1.txt", tmp_path / "2.txt"
    with pytest.raises(ValueError), atomic_outputs([first, second]) as (a, b):
        a.write("one")
        b.write("two")
        raise ValueError
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("index", range(8))
def test_rows_are_streamed_not_collected(tmp_path, index, monkeypatch):
    """Rows are released a chunk at a time: no writer keeps more than one chunk of rows.

    Rows hold no reference cycles, so reference counting frees a dropped row at once.
    (COCO keeps one (confidence, caption) pair per image, never the rows themselves.)
    """
    monkeypatch.setattr(rows_module, "CHUNK_SIZE", 5)
    cases = writers(tmp_path) + [(write_sidecar, tmp_path / "mirror", {}, [])]
    writer, dest, options, _ = cases[index]
    refs: list[weakref.ref] = []

    def rows():
        for i in range(1, 60):
            if i > 7:
                assert refs[i - 8]() is None, f"row {i - 7} still referenced at row {i}"
            row = make_row(i, root=tmp_path, review_outcome="accepted")
            refs.append(weakref.ref(row))
            yield row

    writer(rows(), dest, **options)
    assert len(refs) == 59
