"""Reviewed files that must not half-import: cut short, ambiguous or oversized; and CSV exports
that a spreadsheet must not run as formulas, read back unchanged."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from formats.test_formats_rows import make_row, with_alternatives
from sqlalchemy import func, select

from labeler.errors import FormatError, InputError
from labeler.formats.reviews import read_reviews
from labeler.formats.tabular import write_csv, write_jsonl
from labeler.records import MAX_TEXT
from labeler.review.importer import import_reviews
from labeler.store.models import Review

HEADER = "image_id,path,draft_caption,reviewed_caption,outcome\n"
ROWS = HEADER + "1,a.png,a dog,a big dog,\n2,b.png,a cat,a black cat,\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


# --- files cut short ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        ('3,c.png,a car,"a red', "cut.csv line 4: the file ends inside a quoted field"),
        ('3,c.png,a car,"a red\ncar and', "cut.csv line 4: the file ends inside a quoted field"),
        ('3,c.png,a car,"a red car,\n', "cut.csv line 4: the file ends inside a quoted field"),
        ("3,c.png,a car,a red", "cut.csv line 4: the file ends after 4 of 5 fields"),
        ("3,c.png,a", "cut.csv line 4: the file ends after 3 of 5 fields"),
    ],
)
def test_a_file_cut_mid_record_is_refused_naming_the_line(tmp_path, tail, message):
    path = write(tmp_path, "cut.csv", ROWS + tail)
    with pytest.raises(FormatError, match="^" + message + r".*\(truncated\?\)$"):
        read_reviews(path)


def test_complete_files_without_a_final_line_break_are_read(tmp_path):
    whole = write(tmp_path, "whole.csv", ROWS + "3,c.png,a car,a red car,")
    assert [r.reviewed_text for r in read_reviews(whole)] == [
        "a big dog",
        "a black cat",
        "a red car",
    ]
    quoted = write(tmp_path, "quoted.csv", ROWS + '3,c.png,a car,"a red, car",')
    assert read_reviews(quoted)[-1].reviewed_text == "a red, car"
    # Rows that all leave out trailing empty columns were written that way, not cut short.
    short = write(tmp_path, "short.csv", "image_id,reviewed_caption,outcome\n1,a dog\n2,a cat")
    assert [r.reviewed_text for r in read_reviews(short)] == ["a dog", "a cat"]


def test_a_cut_file_imports_nothing(store, tmp_path):
    path = write(tmp_path, "cut.csv", ROWS + '3,c.png,a car,"a red')
    with pytest.raises(FormatError, match="^cut.csv line 4: the file ends inside a quoted field"):
        import_reviews(store, path)
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(Review)) == 0


# --- ambiguous files ----------------------------------------------------------------------------


def test_a_repeated_column_is_refused_naming_it(tmp_path):
    path = write(tmp_path, "dup.csv", "image_id,reviewed_caption,outcome,reviewed_caption\n")
    with pytest.raises(FormatError, match="^dup.csv line 1: column 'reviewed_caption' appears"):
        read_reviews(path)
    # Blank names are the empty columns a spreadsheet leaves at the end: not repeats.
    blank = write(tmp_path, "blank.csv", "image_id,reviewed_caption,,\n1,a dog,,\n")
    assert [r.reviewed_text for r in read_reviews(blank)] == ["a dog"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            "1,a.png,a dog,a big dog,\n2,b.png,a cat,,\n1,x.png,a dog,a small dog,\n",
            "two.csv line 2 and line 4: two different reviews of the image with image_id 1",
        ),
        (
            ",a.png,a dog,a big dog,\n,b.png,a cat,,\n,a.png,a dog,,rejected\n",
            "two.csv line 2 and line 4: two different reviews of the image with path 'a.png'",
        ),
    ],
)
def test_two_different_reviews_of_one_image_are_refused_naming_both_lines(tmp_path, rows, message):
    with pytest.raises(FormatError, match="^" + message):
        read_reviews(write(tmp_path, "two.csv", HEADER + rows))


def test_an_exact_repeat_is_read_once(tmp_path):
    rows = "1,a.png,a dog,a big dog,\n2,b.png,a cat,,rejected\n1,a.png,a dog,a  big dog,\n"
    records = read_reviews(write(tmp_path, "again.csv", HEADER + rows))
    assert [(r.where, r.image_id) for r in records] == [
        ("again.csv line 2", 1),
        ("again.csv line 3", 2),
    ]
    # Two drafts of one image (two models) are two reviews, not a repeat.
    jsonl = "".join(
        json.dumps({"image_id": 1, "caption_id": c, "reviewed_caption": t}) + "\n"
        for c, t in ((10, "a dog"), (11, "a big dog"))
    )
    assert len(read_reviews(write(tmp_path, "drafts.jsonl", jsonl))) == 2


def test_a_folder_is_named_as_a_folder(store, tmp_path):
    folder = tmp_path / "reviews.csv"
    folder.mkdir()
    with pytest.raises(InputError, match=r"reviews.csv is a folder; name the reviewed file"):
        read_reviews(folder)
    with pytest.raises(InputError, match=r"reviews.csv is a folder; name the reviewed file"):
        import_reviews(store, folder)


def test_a_bad_byte_after_a_byte_order_mark_is_placed_exactly(tmp_path):
    data = b"\xef\xbb\xbf" + HEADER.encode() + b"1,a.png,a dog,un caf\xe9,\n"
    path = tmp_path / "bom.csv"
    path.write_bytes(data)
    offset = data.index(b"\xe9")
    with pytest.raises(
        FormatError, match=rf"^bom.csv line 2: not UTF-8 text \(byte 0xe9 at offset {offset}\)"
    ):
        read_reviews(path)
    # The byte right after the line break, which the offset of the mark used to hide.
    data = b"\xef\xbb\xbf" + HEADER.encode() + b"\xff"
    path.write_bytes(data)
    with pytest.raises(FormatError, match=r"^bom.csv line 2: not UTF-8 text \(byte 0xff at"):
        read_reviews(path)


# --- one limit on a caption's size, in every format ---------------------------------------------


def _oversized(name: str, caption: str) -> str:
    if name.endswith(".csv"):
        return HEADER + f"1,a.png,a dog,{caption},\n"
    if name.endswith(".jsonl"):
        return '{"image_id": 1, "reviewed_caption": null}\n' + json.dumps(
            {"image_id": 2, "reviewed_caption": caption}
        )
    if name == "ls.json":
        result = [{"from_name": "caption", "value": {"text": [caption[:9], caption[10:]]}}]
        task = {"data": {"image_id": 2}, "annotations": [{"result": result}]}
        return json.dumps([{"data": {"image_id": 1}, "annotations": []}, task])
    if name == "min.json":
        return json.dumps([{"image_id": 1, "annotator": 1}, {"image_id": 2, "caption": caption}])
    return json.dumps(
        [{"image_id": 1, "outcome": None}, {"image_id": 2, "reviewed_caption": caption}]
    )


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("big.csv", "big.csv line 2"),
        ("big.jsonl", "big.jsonl line 2"),
        ("big.json", "big.json record 2"),
        ("ls.json", "ls.json record 2"),  # two text regions, each under the limit
        ("min.json", "min.json record 2"),
    ],
)
def test_a_caption_over_the_limit_is_refused_in_every_format(tmp_path, name, where):
    path = write(tmp_path, name, _oversized(name, "x" * (MAX_TEXT + 1)))
    with pytest.raises(
        FormatError, match=f"^{where}: .* {MAX_TEXT + 1} characters long; the limit"
    ):
        read_reviews(path)


def test_csv_fields_far_over_the_limit_are_refused_and_at_the_limit_read(tmp_path):
    far = write(tmp_path, "far.csv", _oversized("far.csv", "x" * (MAX_TEXT + 5)))
    with pytest.raises(FormatError, match="^far.csv line 2: a field is longer than the limit"):
        read_reviews(far)
    at = write(tmp_path, "at.csv", _oversized("at.csv", "x" * MAX_TEXT))
    (record,) = read_reviews(at)
    assert len(record.reviewed_text) == MAX_TEXT


# --- spreadsheet formulas -----------------------------------------------------------------------

FORMULAS = ["=SUM(A1)", "-1 apples", "@home", "'=already quoted", "+1", "\tindented", "''-x"]


def test_csv_cells_that_start_like_formulas_are_written_as_text(tmp_path):
    rows = [
        with_alternatives(make_row(i, text=t, path=f"{t[:3]}.png"), "=alt")
        for i, t in enumerate(FORMULAS, 1)
    ]
    rows.append(make_row(99, text="a plain 'quoted' caption", path="p.png"))
    write_csv(rows, tmp_path / "f.csv", n_best=2)
    frame = pd.read_csv(tmp_path / "f.csv", keep_default_na=False, dtype=str)
    assert list(frame["draft_caption"]) == ["'" + t for t in FORMULAS] + [rows[-1].text]
    assert list(frame["path"]) == ["'" + r.path for r in rows[:-1]] + ["p.png"]
    assert set(frame["alt1_caption"][:-1]) == {"'=alt"}
    write_jsonl(rows, tmp_path / "f.jsonl")  # JSON is not for spreadsheets: left alone
    lines = (tmp_path / "f.jsonl").read_text().splitlines()
    assert [json.loads(line)["draft_caption"] for line in lines] == [r.text for r in rows]


def test_formula_guards_come_off_on_import(tmp_path):
    rows = [
        make_row(i, text=f"draft {i}", path=f"{t[:2]}{i}.png") for i, t in enumerate(FORMULAS, 1)
    ]
    write_csv(rows, tmp_path / "r.csv")
    frame = pd.read_csv(tmp_path / "r.csv", keep_default_na=False, dtype=str)
    frame["reviewed_caption"] = [
        "'" + t if t.lstrip("'")[:1] in "=+-@\t" else t for t in FORMULAS
    ]  # as our export would guard them
    frame.to_csv(tmp_path / "r.csv", index=False)
    records = read_reviews(tmp_path / "r.csv")
    assert [r.reviewed_text for r in records] == [" ".join(t.split()) for t in FORMULAS]
    assert [r.path for r in records] == [r.path for r in rows]


def test_reviewed_captions_survive_the_round_trip(tmp_path):
    reviewed = [
        make_row(i, text=f"draft {i}", review_text=t, review_outcome="edited")
        for i, t in enumerate(FORMULAS, 1)
    ]
    write_csv(reviewed, tmp_path / "again.csv")
    text = (tmp_path / "again.csv").read_text(encoding="utf-8-sig")
    assert ",'=SUM(A1),edited," in text and ",'-1 apples,edited," in text
    assert ",''=already quoted,edited," in text
    records = read_reviews(tmp_path / "again.csv")
    assert [r.reviewed_text for r in records] == [" ".join(t.split()) for t in FORMULAS]
