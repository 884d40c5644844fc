"""The row helpers and the outcome rules shared by every import format.

`make_row` and `with_alternatives` are the fixtures of all tests/formats modules (imported as
`formats.test_formats_rows`, through pytest's pythonpath = ["tests"]).
"""

from __future__ import annotations

import math
from dataclasses import fields, replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from labeler.errors import FormatError
from labeler.records import (
    END_TOKEN,
    Alternative,
    DraftChunk,
    ExportRow,
    decide_outcome,
    int_field,
    normalise_text,
    text_field,
    time_field,
)


def make_row(image_id: int = 1, *, root: Path = Path("/data/set"), **changes) -> ExportRow:
    """A plausible finished draft of image `image_id` under `root`."""
    text = changes.pop("text", f"a red square number {image_id}")
    words = text.split()
    logprobs = [-0.1 - 0.01 * i for i in range(len(words))] + [-0.05]
    path = changes.pop("path", f"images/img_{image_id:03d}.png")
    row = ExportRow(
        image_id=image_id,
        dataset="set",
        path=path,
        abs_path=str(root / path),
        content_hash=f"{image_id:064x}",
        width=4,
        height=3,
        model_name="show-tell",
        model_hash="ab12cd34ef",
        settings_key="beam=3",
        caption_id=1000 + image_id,
        text=text,
        log_likelihood=sum(logprobs),
        num_tokens=len(logprobs),
        confidence=math.exp(sum(logprobs) / len(logprobs)),
        p_accept=1 / (2 + image_id),  # unlike the confidence, so a mix-up shows
        token_logprobs=logprobs,
        margin=0.5,
        finished=True,
        repeated_ngram=False,
        has_unknown=False,
    )
    return replace(row, **changes)


def with_alternatives(row: ExportRow, *texts: str) -> ExportRow:
    alternatives = tuple(
        Alternative(i, t, -1.0 * i, 4, confidence=math.exp(-i / 4), p_accept=0.5 / (i + 1))
        for i, t in enumerate(texts, start=1)
    )
    return replace(row, alternatives=alternatives)


def test_least_certain_is_a_word_or_the_end_token():
    row = make_row(text="a cat on a mat", token_logprobs=[-0.1, -2.0, -0.3, -0.1, -0.2, -0.1])
    assert row.least_certain == ("cat", -2.0)
    ended = replace(row, token_logprobs=[-0.1, -0.2, -0.3, -0.1, -0.2, -3.0])
    assert ended.least_certain == (END_TOKEN, -3.0)
    assert replace(row, token_logprobs=[]).least_certain is None


def test_flagged_and_model_version_and_final_text():
    row = make_row()
    assert not row.flagged
    assert replace(row, finished=False).flagged
    assert replace(row, repeated_ngram=True).flagged
    assert replace(row, has_unknown=True).flagged
    assert row.model_version == "show-tell-ab12cd"
    named = replace(row, model_name="show-tell-ab12cd")  # a checkpoint's name carries the hash
    assert named.model_version == "show-tell-ab12cd"
    edited = replace(row, review_text="a blue square", review_outcome="edited")
    assert edited.final_text == "a blue square"
    assert replace(edited, review_outcome="rejected").final_text == row.text


@pytest.mark.parametrize(
    ("draft", "reviewed", "outcome", "expected"),
    [
        ("a dog", None, None, None),  # untouched row: not reviewed
        ("a dog", "  ", "", None),
        ("a dog", "a  dog\n", None, ("a dog", "accepted")),  # same after whitespace
        ("a dog", "a cat", None, ("a cat", "edited")),
        (None, "a cat", None, ("a cat", None)),  # no draft to compare: the store decides
        ("a dog", None, "Accepted", ("a dog", "accepted")),
        ("a dog", "", " rejected ", (None, "rejected")),
        ("a dog", "a cat", "rejected", ("a cat", "rejected")),  # explicit outcome wins
        ("a dog", None, "skipped", (None, "skipped")),
        ("a dog", "a dog", "edited", ("a dog", "edited")),
    ],
)
def test_outcome_rules(draft, reviewed, outcome, expected):
    assert decide_outcome("f.csv line 2", draft, reviewed, outcome) == expected


@pytest.mark.parametrize(
    ("reviewed", "outcome", "message"),
    [
        (None, "approved", "f.csv line 2: unknown outcome 'approved'"),
        ("a cat", "accepted", "f.csv line 2: outcome 'accepted' but the reviewed caption"),
        ("", "edited", "f.csv line 2: outcome 'edited' needs a reviewed caption"),
    ],
)
def test_contradictory_or_unknown_outcomes_name_the_line(reviewed, outcome, message):
    with pytest.raises(FormatError, match="^" + message):
        decide_outcome("f.csv line 2", "a dog", reviewed, outcome)


def test_field_checks():
    assert int_field("17", "w", "image_id") == 17
    assert int_field("17.0", "w", "image_id") == 17  # how a spreadsheet rewrites an int column
    assert int_field(17.0, "w", "image_id") == 17
    assert int_field("", "w", "image_id") is None
    for bad in ("seventeen", "1.5", True, [1]):
        with pytest.raises(FormatError, match="^w: image_id must be a whole number"):
            int_field(bad, "w", "image_id")
    with pytest.raises(FormatError, match="^w: reviewed_caption is not text"):
        text_field(42, "w", "reviewed_caption")
    stamp = time_field("2024-05-01T10:00:00Z", "w", "reviewed_at")
    assert stamp == datetime(2024, 5, 1, 10, tzinfo=timezone.utc)
    assert time_field("2024-05-01T10:00:00", "w", "t").tzinfo is timezone.utc
    with pytest.raises(FormatError, match="^w: reviewed_at is not an ISO 8601 time"):
        time_field("yesterday", "w", "reviewed_at")
    assert normalise_text(" a\n b\t c ") == "a b c"


def test_a_chunk_holds_the_rows_column_by_column():
    columns = [f.name for f in fields(DraftChunk) if f.init]  # `derived` is a cache
    assert columns == [f.name for f in fields(ExportRow)]
    rows = [make_row(1), with_alternatives(make_row(2), "a box"), make_row(3, margin=None)]
    chunk = DraftChunk.from_rows(rows)
    assert len(chunk) == 3 and chunk.text[1] == rows[1].text
    assert list(chunk.rows()) == rows
    assert chunk.flagged() == [r.flagged for r in rows]


@pytest.mark.parametrize(
    ("text", "logprobs"),
    [
        ("a cat on a mat", [-0.1, -2.0, -0.3, -0.1, -0.2, -0.1]),
        ("a cat", [-0.1, -0.2, -3.0]),  # the end token
        ("a cat", [-0.1, -0.2, -0.3, -4.0]),  # more tokens than words and end: still <end>
        ("", [-1.0]),
        ("a b", [-1.0, -1.0, -0.5]),  # the first of equals
        ("a b", [-0.5, math.nan, -1.0]),
        ("  spaced   out ", [-0.1, -0.9]),
    ],
)
def test_least_certain_of_a_chunk_is_that_of_each_row(text, logprobs):
    rows = [make_row(1), make_row(2, text=text, token_logprobs=logprobs), make_row(3)]
    words, values = DraftChunk.from_rows(rows).least_certain()
    expected = [r.least_certain for r in rows]
    assert list(zip(words, values, strict=True)) == expected
    no_tokens = [make_row(1), make_row(2, token_logprobs=[])]
    words, values = DraftChunk.from_rows(no_tokens).least_certain()
    assert (words[1], values[1]) == (None, None)
