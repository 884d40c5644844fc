"""Reading reviewed files: detection, spreadsheet quirks, and malformed files named by line."""

from __future__ import annotations

import json

import pytest
from formats.test_formats_rows import make_row

from labeler.errors import FormatError, InputError
from labeler.formats.reviews import detect_format, read_reviews
from labeler.formats.tabular import write_csv

HEADER = "image_id,path,draft_caption,reviewed_caption,outcome"


def write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_detection(tmp_path):
    cases = {
        "a.csv": HEADER + "\n",
        "a.tsv": HEADER.replace(",", "\t") + "\n",
        "a.jsonl": '{"image_id": 1, "reviewed_caption": null}\n',
        "a.json": '[{"image_id": 1, "outcome": null}]',
        "b.json": '[{"data": {"image_id": 1}, "annotations": []}]',
        "c.json": '[{"image_id": 1, "caption": "x", "annotator": 1}]',
        "b.csv": "annotation_id,annotator,caption,image_id\n",
        "e.json": "[]",
    }
    found = {name: detect_format(write(tmp_path, name, text)) for name, text in cases.items()}
    assert found == {
        "a.csv": "csv",
        "a.tsv": "csv",
        "a.jsonl": "jsonl",
        "a.json": "json",
        "b.json": "label-studio",
        "c.json": "label-studio-min",
        "b.csv": "label-studio-csv",
        "e.json": "json",
    }


def test_excel_style_files(tmp_path):
    # Excel in a comma-decimal locale: semicolons, a BOM, CRLF, a quoted multi-line caption.
    text = (
        "image_id;path;draft_caption;reviewed_caption;outcome\r\n"
        '1;a.png;a dog;"a dog; brown\r\nand small";\r\n'
        "2;b.png;a cat;;\r\n"
        "\r\n"
        "3;c.png;a car;a car;\r\n"
    )
    path = write(tmp_path, "excel.csv", "\ufeff" + text)
    records = read_reviews(path)
    assert [(r.where, r.image_id, r.outcome, r.reviewed_text) for r in records] == [
        ("excel.csv line 2", 1, "edited", "a dog; brown and small"),
        ("excel.csv line 6", 3, "accepted", "a car"),
    ]


def test_reviewer_and_time_columns(tmp_path):
    path = write(
        tmp_path,
        "r.csv",
        "image_id,reviewed_caption,reviewer,reviewed_at\n7,a cat,ann,2024-05-01T10:00:00+02:00\n",
    )
    (record,) = read_reviews(path)
    assert record.outcome is None and record.reviewed_text == "a cat"  # no draft: store decides
    assert record.reviewer == "ann" and record.reviewed_at.utcoffset().total_seconds() == 7200


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "bad.json",
            '[{"image_id": 1,\n "outcome": "accepted",}]',
            "bad.json line 2 column 24: bad JSON",
        ),
        (
            "bad.jsonl",
            '{"image_id": 1, "outcome": "accepted"}\n{"image_id": 2, oops}\n',
            "bad.jsonl line 2 column 17: bad JSON",
        ),
        ("obj.json", '{"image_id": 1}', "obj.json line 1"),  # an object alone reads as JSONL
        (
            "cols.csv",
            "image_id,draft_caption\n1,a dog\n",
            "cols.csv line 1: cannot tell the format",
        ),
        (
            "noid.csv",
            "draft_caption,reviewed_caption\na,b\n",
            "noid.csv line 1: missing column image_id or path or content_hash",
        ),
        (
            "num.json",
            '[{"image_id": 1, "reviewed_caption": "ok"}, {"image_id": 2, "reviewed_caption": 42}]',
            "num.json record 2: reviewed_caption is not text",
        ),
        (
            "list.jsonl",
            '{"image_id": 2, "reviewed_caption": ["a", "b"]}',
            "list.jsonl line 1: reviewed_caption is not text",
        ),
        (
            "outcome.csv",
            HEADER + "\n1,a,b,,approved\n",
            "outcome.csv line 2: unknown outcome 'approved'",
        ),
        (
            "extra.csv",
            HEADER + "\n1,a,a dog,a dog, brown,edited\n",
            "extra.csv line 2: 6 fields but the header has 5",
        ),
        ("id.csv", HEADER + "\nseven,a,b,c,\n", "id.csv line 2: image_id must be a whole number"),
        (
            "anon.jsonl",
            '{"draft_caption": "a", "reviewed_caption": "b"}',
            "anon.jsonl line 1: no image_id, path or content_hash",
        ),
        ("empty.csv", "  \n", "empty.csv: the file is empty"),
        (
            "time.csv",
            "image_id,outcome,reviewed_at\n1,accepted,last tuesday\n",
            "time.csv line 2: reviewed_at is not an ISO 8601 time",
        ),
    ],
)
def test_malformed_files_name_the_line_or_record(tmp_path, name, content, message):
    with pytest.raises(FormatError, match="^" + message):
        read_reviews(write(tmp_path, name, content))


def test_wrong_encoding_names_the_line(tmp_path):
    text = HEADER + "\n1,a.png,a dog,a dog,\n2,b.png,a cat,un café,\n"
    path = write(tmp_path, "latin.csv", text, encoding="cp1252")
    with pytest.raises(
        FormatError, match=r"^latin.csv line 3: not UTF-8 text \(byte 0xe9 at offset 94\)"
    ):
        read_reviews(path)


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        read_reviews(tmp_path / "missing.csv")
    with pytest.raises(InputError, match="unknown import format 'xml'"):
        read_reviews(tmp_path / "missing.csv", fmt="xml")


def test_format_can_be_forced(tmp_path):
    path = write(
        tmp_path,
        "ls.json",
        json.dumps([{"image_id": 3, "caption": "a cat", "annotation_id": 9, "annotator": 1}]),
    )
    (record,) = read_reviews(path, fmt="JSON_MIN")
    assert (record.image_id, record.reviewed_text, record.outcome) == (3, "a cat", None)
    with pytest.raises(FormatError, match="record 1: not a Label Studio task"):
        read_reviews(path, fmt="label-studio")


def test_untouched_export_imports_nothing(tmp_path):
    write_csv([make_row(1), make_row(2)], tmp_path / "x.csv")
    assert read_reviews(tmp_path / "x.csv") == []
