"""CSV / JSONL / JSON exports, opened with pandas and json, and the spreadsheet round trip."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import datetime, timezone

import pandas as pd
import pytest
from formats.test_formats_rows import make_row, with_alternatives

from labeler.formats.reviews import read_reviews
from labeler.formats.tabular import columns, write_csv, write_json, write_jsonl

TRICKY = [
    'a dog, a cat and "the" bird',
    "two lines\nof caption",
    "café crème à Zürich, 東京 🐈",
    "=SUM(A1) starts like a formula",
    "",
]


def tricky_rows():
    for i, text in enumerate(TRICKY, start=1):
        yield make_row(i, text=text, path=f'odd, names/"q" {i}.png')


def test_csv_opens_in_pandas_with_every_caption_intact(tmp_path):
    dest = tmp_path / "drafts.csv"
    result = write_csv(tricky_rows(), dest)
    assert result.count == len(TRICKY) and result.paths == [dest]
    assert dest.read_bytes().startswith(b"\xef\xbb\xbf")  # BOM, so Excel reads UTF-8
    frame = pd.read_csv(dest, keep_default_na=False)
    assert list(frame.columns) == columns()
    assert list(frame["draft_caption"]) == TRICKY
    assert list(frame["path"]) == [f'odd, names/"q" {i}.png' for i in range(1, 6)]
    assert set(frame["reviewed_caption"]) == {""} and set(frame["outcome"]) == {""}
    assert frame["finished"].tolist() == [True] * 5
    expected = [r.confidence for r in tricky_rows()]
    assert frame["confidence"].tolist() == expected  # floats round-trip exactly
    logprobs = [json.loads(cell) for cell in frame["token_logprobs"]]
    assert logprobs == [[round(v, 4) for v in r.token_logprobs] for r in tricky_rows()]


def test_csv_scores_and_existing_reviews(tmp_path):
    row = make_row(text="a cat sat", token_logprobs=[-0.1, -2.5, -0.2, -0.1], margin=None)
    reviewed = replace(
        row,
        review_text="a cat sits",
        review_outcome="edited",
        reviewer="ann",
        reviewed_at=datetime(2024, 5, 1, 10, tzinfo=timezone.utc),
    )
    write_csv([reviewed], tmp_path / "r.csv")
    record = pd.read_csv(tmp_path / "r.csv").iloc[0]
    assert record["least_certain_word"] == "cat" and record["least_certain_logprob"] == -2.5
    assert math.isnan(record["margin"])
    assert record["reviewed_caption"] == "a cat sits" and record["outcome"] == "edited"
    assert record["reviewer"] == "ann" and record["reviewed_at"] == "2024-05-01T10:00:00+00:00"


def test_n_best_adds_alternative_columns(tmp_path):
    rows = [with_alternatives(make_row(1), "a red box", "a square"), make_row(2)]
    write_csv(rows, tmp_path / "n.csv", n_best=3)
    frame = pd.read_csv(tmp_path / "n.csv")
    assert frame.loc[0, "alt1_caption"] == "a red box"
    assert frame.loc[0, "alt2_caption"] == "a square"
    assert frame.loc[0, "alt1_confidence"] == rows[0].alternatives[0].confidence
    assert frame["alt2_log_likelihood"].isna().tolist() == [False, True]
    assert "alt3_caption" not in frame.columns


@pytest.mark.parametrize("writer", [write_jsonl, write_json])
def test_json_exports_parse_and_hold_the_same_records(tmp_path, writer):
    dest = tmp_path / "out.json"
    rows = [with_alternatives(make_row(1), "a box"), *tricky_rows()]
    rows[1] = replace(
        rows[1],
        log_likelihood=-math.inf,
        confidence=0.0,
        token_logprobs=[-0.5, -math.inf, math.nan],
    )
    assert writer(rows, dest, n_best=2).count == 6
    text = dest.read_text(encoding="utf-8")
    if writer is write_jsonl:
        records = [json.loads(line) for line in text.splitlines()]
    else:
        records = json.loads(text)
    assert [r["draft_caption"] for r in records[1:]] == TRICKY
    assert records[0]["alt1_caption"] == "a box" and records[0]["token_logprobs"]
    assert records[1]["log_likelihood"] is None  # JSON has no infinity
    assert records[1]["token_logprobs"] == [-0.5, None, None]
    assert records[0]["token_logprobs"] == [round(v, 4) for v in rows[0].token_logprobs]
    assert records[0]["reviewed_caption"] is None and records[0]["outcome"] is None
    assert list(records[0]) == columns(2)


def test_empty_json_array_is_valid(tmp_path):
    write_json([], tmp_path / "e.json")
    assert json.loads((tmp_path / "e.json").read_text()) == []


def test_spreadsheet_round_trip(tmp_path):
    dest = tmp_path / "review.csv"
    rows = [make_row(i, text=t) for i, t in enumerate(["a dog", "a cat, black", "a car"], 1)]
    write_csv(rows + [make_row(4), make_row(5)], dest)
    frame = pd.read_csv(dest, keep_default_na=False, dtype=str)
    frame.loc[0, "reviewed_caption"] = "a dog"  # unchanged: accepted
    frame.loc[1, "reviewed_caption"] = 'a black cat, "sleeping"\non a sofa'  # edited
    frame.loc[2, "outcome"] = "rejected"
    frame.loc[3, "outcome"] = "Skipped"
    frame.to_csv(dest, index=False)  # as a user's script would save it: no BOM
    records = read_reviews(dest)
    assert [(r.image_id, r.outcome) for r in records] == [
        (1, "accepted"),
        (2, "edited"),
        (3, "rejected"),
        (4, "skipped"),
    ]
    assert records[0].where == "review.csv line 2"
    assert records[1].reviewed_text == 'a black cat, "sleeping" on a sofa'
    assert records[1].draft_text == "a cat, black" and records[1].caption_id == 1002
    assert records[3].reviewed_text is None
    assert records[0].content_hash == rows[0].content_hash and records[0].path == rows[0].path


def test_round_trip_through_jsonl_and_json(tmp_path):
    for writer, name in ((write_jsonl, "r.jsonl"), (write_json, "r.json")):
        dest = tmp_path / name
        writer([make_row(1, text="a dog"), make_row(2)], dest)
        text = dest.read_text(encoding="utf-8").replace(
            '"reviewed_caption": null', '"reviewed_caption": "a big dog"', 1
        )
        dest.write_text(text, encoding="utf-8")
        records = read_reviews(dest)
        assert [(r.image_id, r.outcome, r.reviewed_text) for r in records] == [
            (1, "edited", "a big dog")
        ]
