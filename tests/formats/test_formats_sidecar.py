"""Sidecar captions: beside the images or mirrored, one UTF-8 line, never clobbered."""

from __future__ import annotations

from dataclasses import replace

import pytest
from formats.test_formats_rows import make_row

from labeler.errors import InputError
from labeler.formats.sidecar import write_sidecar


def test_sidecars_beside_the_images(tmp_path):
    rows = [
        make_row(1, root=tmp_path, text="a red\nsquare,  café"),
        replace(make_row(2, root=tmp_path), review_text="an edit", review_outcome="edited"),
    ]
    (tmp_path / "images").mkdir()
    result = write_sidecar(iter(rows), extension="caption")
    assert (result.count, result.skipped, result.conflicts) == (2, 0, 0)
    first = tmp_path / "images" / "img_001.caption"
    assert first.read_bytes() == "a red square, café".encode()  # one line, no newline
    assert (tmp_path / "images" / "img_002.caption").read_text(encoding="utf-8") == "an edit"
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        "img_001.caption",
        "img_002.caption",
    ]


def test_existing_sidecars_are_skipped_unless_forced(tmp_path):
    (tmp_path / "images").mkdir()
    handmade = tmp_path / "images" / "img_001.txt"
    handmade.write_text("written by hand", encoding="utf-8")
    rows = [make_row(1, root=tmp_path), make_row(2, root=tmp_path)]
    result = write_sidecar(iter(rows))
    assert (result.count, result.skipped) == (1, 1)
    assert handmade.read_text(encoding="utf-8") == "written by hand"
    result = write_sidecar(iter(rows), force=True)
    assert (result.count, result.skipped) == (2, 0)
    assert handmade.read_text(encoding="utf-8") == rows[0].text


def test_mirror_folder_and_conflicts(tmp_path):
    out = tmp_path / "captions"
    rows = [make_row(1, path="x/a.jpg"), make_row(2, path="x/a.png"), make_row(3, path="y/b.jpg")]
    result = write_sidecar(iter(rows), out)
    assert (result.count, result.conflicts, result.paths) == (2, 1, [out])
    assert (out / "x" / "a.txt").read_text(encoding="utf-8") == rows[0].text
    assert (out / "y" / "b.txt").exists()


def test_a_rejected_draft_gets_no_sidecar(tmp_path):
    (tmp_path / "images").mkdir()
    rows = [
        replace(make_row(1, root=tmp_path), review_outcome="rejected"),
        replace(make_row(2, root=tmp_path), review_outcome="skipped"),
        replace(make_row(3, root=tmp_path), review_outcome="accepted"),
    ]
    result = write_sidecar(iter(rows))
    assert (result.count, result.rejected) == (2, 1)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["img_002.txt", "img_003.txt"]


def test_bad_options(tmp_path):
    with pytest.raises(InputError, match="extension must be one of"):
        write_sidecar([make_row(1)], tmp_path, extension=".png")
    with pytest.raises(InputError, match="is not a relative path"):
        write_sidecar([make_row(1, path="../escape.png")], tmp_path)
