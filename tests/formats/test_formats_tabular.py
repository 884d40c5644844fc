"""CSV / JSONL / JSON exports, opened with pandas and json, and the spreadsheet round trip."""

from __future__ import annotations

import json
import math
import random
import struct
from dataclasses import replace
from datetime import datetime, timezone

import pandas as pd
import pytest
from formats.test_formats_rows import make_row, with_alternatives

from labeler.formats.reviews import read_reviews
from labeler.formats.tabular import (
    _JsonCells,
    columns,
    logprobs_text,
    logprobs_texts,
    number_texts,
    write_csv,
    write_json,
    write_jsonl,
)

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
    # A caption a spreadsheet would run as a formula is guarded with a quote (import drops it).
    assert list(frame["draft_caption"]) == ["'" + t if t[:1] == "=" else t for t in TRICKY]
    assert list(frame["path"]) == [f'odd, names/"q" {i}.png' for i in range(1, 6)]
    assert set(frame["reviewed_caption"]) == {""} and set(frame["outcome"]) == {""}
    assert frame["finished"].tolist() == [True] * 5
    expected = [r.confidence for r in tricky_rows()]
    assert frame["confidence"].tolist() == expected  # floats round-trip exactly
    assert frame["p_accept"].tolist() == [r.p_accept for r in tricky_rows()]
    assert columns().index("p_accept") + 1 == columns().index("confidence")  # side by side
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
    assert frame.loc[0, "alt1_p_accept"] == rows[0].alternatives[0].p_accept
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


# The writers format a chunk of rows a column at a time, with fast paths that must write what
# formatting one value at a time writes. The reference below is that: the row-at-a-time code
# the writers replaced, kept here to compare against.


def _reference_values(row, n_alt):
    least = row.least_certain
    values = [
        row.image_id, row.dataset, row.path, row.text, row.review_text, row.review_outcome,
        row.p_accept, row.confidence, least[0] if least else None,
        least[1] if least else None, row.flagged, row.log_likelihood, row.num_tokens, row.margin,
        row.finished, row.repeated_ngram, row.has_unknown,
        RawJson(logprobs_text(row.token_logprobs)),
    ]  # fmt: skip
    for i in range(n_alt):
        alt = row.alternatives[i] if i < len(row.alternatives) else None
        values += (
            (alt.text, alt.p_accept, alt.confidence, alt.log_likelihood) if alt else (None,) * 4
        )
    when = row.reviewed_at.isoformat() if row.reviewed_at else None
    return values + [
        row.caption_id, row.content_hash, row.abs_path, row.width, row.height, row.model_name,
        row.model_hash, row.settings_key, row.reviewer, when,
    ]  # fmt: skip


class RawJson(str):
    pass


def _reference_csv(rows, n_best):
    def cell(value):
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            if value.lstrip("'")[:1] in ("=", "+", "-", "@", "\t", "\r"):  # OWASP: as text
                value = "'" + value
            if any(c in value for c in ',"\n\r'):
                return '"' + value.replace('"', '""') + '"'
            return str(value)
        return "" if value is None else str(value)

    lines = [",".join(columns(n_best))]
    lines += [",".join(map(cell, _reference_values(r, n_best - 1))) for r in rows]
    return "\ufeff" + "".join(line + "\r\n" for line in lines)


def _reference_jsonl(rows, n_best):
    def value(v):
        if isinstance(v, RawJson):
            return v
        if isinstance(v, float) and not math.isfinite(v):
            return "null"
        return json.dumps(v, ensure_ascii=False)

    keys = columns(n_best)
    return "".join(
        "{"
        + ", ".join(f"{json.dumps(k)}: {value(v)}" for k, v in zip(keys, values, strict=True))
        + "}\n"
        for values in (_reference_values(r, n_best - 1) for r in rows)
    )


def _odd_rows(rng, count, *, odd):
    """Rows shaped like real drafts; with `odd`, also every value a fast path must refuse."""
    texts = ["a red square", 'say "hi", twice', "café\nlune", "", "=1+1", "two  spaces", "-1 a"]
    texts += ["'@x", "''+y", "'a", "\tz"]
    floats = [-rng.random() * 30 for _ in range(5)]
    if odd:
        floats += [math.nan, -math.inf, 1e-07, -2.5e-05, 1e16, -0.0, 0.03125, 123456789.0]
    rows = []
    for i in range(1, count + 1):
        text = rng.choice(texts) if odd else " ".join(rng.choices(["a", "b", "cat"], k=4))
        n = rng.choice([0, 1, 5, 9]) if odd else rng.randint(4, 9)
        logprobs = [rng.choice(floats) if odd and rng.random() < 0.2 else -rng.random() * 3
                    for _ in range(n)]  # fmt: skip
        row = make_row(
            i, text=text, path=rng.choice(["a/b.png", "odd, \"name\".png", "bad\udce9.png", "@p"])
            if odd else f"d/{i}.png", token_logprobs=logprobs,
            confidence=rng.choice(floats) if odd else rng.random(),
            p_accept=rng.choice([*floats, 0.0, 1.0]) if odd else rng.random(),
            log_likelihood=rng.choice(floats), margin=None if odd and i % 3 else rng.random(),
            width=None if odd and i % 4 == 0 else 640, finished=rng.random() < 0.9,
            repeated_ngram=odd and i % 5 == 0, reviewer="ann, b" if odd and i % 2 else None,
            review_text=rng.choice([None, 'ok, "fine"', "50% off"]) if odd else None,
            review_outcome="edited" if odd and i % 2 else None,
            reviewed_at=datetime(2024, 5, 1, 10, tzinfo=timezone.utc) if odd and i % 2 else None,
        )  # fmt: skip
        rows.append(with_alternatives(row, *texts[: i % 3]) if odd else row)
    return rows


@pytest.mark.parametrize("odd", [False, True])
@pytest.mark.parametrize("n_best", [1, 3])
def test_writers_write_what_one_value_at_a_time_writes(tmp_path, odd, n_best):
    rows = _odd_rows(random.Random(n_best), 300, odd=odd)
    write_csv(rows, tmp_path / "a.csv", n_best=n_best)
    expected = _reference_csv(rows, n_best).encode("utf-8", "replace")
    assert (tmp_path / "a.csv").read_bytes() == expected
    write_jsonl(rows, tmp_path / "a.jsonl", n_best=n_best)
    expected = _reference_jsonl(rows, n_best).encode("utf-8", "replace")
    assert (tmp_path / "a.jsonl").read_bytes() == expected


def test_orjson_writes_numbers_as_python_does_or_the_column_falls_back():
    rng = random.Random(5)
    bits = [struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0] for _ in range(20000)]
    values = [v for v in bits if math.isfinite(v)] + [rng.uniform(-40, 0) for _ in range(20000)]
    values += [math.exp(rng.uniform(-40, 0)) for _ in range(20000)]
    values += [10.0**e * m for e in range(-20, 20) for m in (1, 1.5, -9.999)] + [0.0, -0.0]
    for start in range(0, len(values), 500):
        column = values[start : start + 500]
        assert number_texts(column, repr) == list(map(repr, column))
    for low in (1e-5, 1e-6, 1e-300):  # orjson writes these 0.00001, 1e-6 and 1e-300
        small = [rng.uniform(low, 10 * low) for _ in range(100)]
        assert number_texts(small, repr) == list(map(repr, small))
    fast = [rng.uniform(-40, 0) for _ in range(500)]
    assert number_texts(fast, lambda v: pytest.fail("needless fallback")) == list(map(repr, fast))
    ints = [rng.randint(-(2**63), 2**63 - 1) for _ in range(500)] + [0, 2**70]
    assert number_texts(ints, str) == list(map(str, ints))
    odd = [1.5, None, math.nan, True, 1e-05]
    assert number_texts(odd, str) == ["1.5", "None", "nan", "True", "1e-05"]


def test_json_text_columns_escape_every_code_point_as_json_does():
    code_points = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    column = ["".join(code_points[i : i + 700]) for i in range(0, len(code_points), 700)]
    column += ['a "quoted", comma', '","', "\\", '\\"', 'back\\\\slash"', "\udce9 escaped"]
    assert _JsonCells().text(column) == [json.dumps(v, ensure_ascii=False) for v in column]
    assert _JsonCells().text(["x", None, "y"]) == ['"x"', "null", '"y"']
    assert _JsonCells().text(["x", 3, "y"]) == ['"x"', "3", '"y"']


def test_logprobs_of_a_chunk_are_those_of_each_row():
    rng = random.Random(9)
    near_ties = [-0.03125, -0.00005, -1.23455, -2.5e-05, -0.0, 0.0]
    kinds = {
        "plain": lambda: -rng.random() * rng.choice([1, 30, 1000]),
        "printed to 5 places": lambda: float(f"{-rng.random() * 10:.5f}"),
        "tiny": lambda: -rng.random() * 1e-4,
        "near ties": lambda: rng.choice(near_ties),
        "odd": lambda: rng.choice([math.nan, -math.inf, -1e12, -rng.random()]),
    }
    for name, draw in kinds.items():
        for _ in range(10):
            column = [[draw() for _ in range(rng.randint(1, 14))] for _ in range(200)]
            assert logprobs_texts(column) == [logprobs_text(lp) for lp in column], name
    assert logprobs_texts([[], [-0.5]]) == ["[]", "[-0.5000]"]
