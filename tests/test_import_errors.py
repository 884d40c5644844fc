"""`labeler import` of files the store cannot take: one line naming the record, exit code 1, and
the reviews table as it was, on every backend (the checks run before the database is touched)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from labeler.cli import app
from labeler.store.models import Caption, Dataset, Image, Model, Review

DRAFT = "a red dot"
LONG_NAME = "r" * 201


@pytest.fixture
def reviewed(store, tmp_path):
    """A store with one image, its draft (both id 1) and one review imported from a good file."""
    with store.write() as session:
        session.add(Model(id=1, content_hash="ab" * 32, name="m", family="show-tell"))
        session.add(Dataset(id=1, name="d", root="/data", root_raw=b"/data"))
        session.flush()
        session.add(Image(id=1, dataset_id=1, path="a.jpg", path_raw=b"a.jpg", status="ok"))
        session.flush()
        session.add(
            Caption(id=1, image_id=1, model_id=1, settings_key="k", rank=0, text=DRAFT,
                    log_likelihood=-1.0, num_tokens=4, confidence=0.5, score=-1.0,
                    token_logprobs=[-0.25] * 4, margin=0.1, finished=True,
                    repeated_ngram=False, has_unknown=False)
        )  # fmt: skip
    good = tmp_path / "good.jsonl"
    good.write_text(_line(reviewed_caption="a blue dot", reviewer="ana"))
    done = _import(store, good)
    assert done.exit_code == 0, done.output
    return store


def _line(**fields: object) -> str:
    return (
        json.dumps({"image_id": 1, "reviewed_caption": "a dot", "outcome": "edited", **fields})
        + "\n"
    )


def _task(data: dict, **annotation: object) -> str:
    result = [{"from_name": "caption", "type": "textarea", "value": {"text": ["a dot"]}}]
    return json.dumps([{"data": {"image_id": 1, **data}, "annotations": [
        {"result": result, "completed_by": 1, **annotation}]}])  # fmt: skip


def _import(store, path, *options: str):
    return CliRunner().invoke(app, ["import", str(path), *options, "--db", store.url])


def _reviews(store) -> list[tuple]:
    with store.session() as session:
        return [tuple(r) for r in session.execute(select(Review.__table__).order_by(Review.id))]


NESTED = "[" * 100_000 + "]" * 100_000

CASES = {
    # 1. nesting deeper than the parser's stack
    "deep.json": (NESTED, "deep.json: nested too deeply"),
    "deep.jsonl": ('{"image_id": ' + NESTED + "}\n", "deep.jsonl line 1: nested too deeply"),
    "deep-ls.csv": (
        "image_id,annotation_id,caption\n1,5," + '"[{""a"":' + NESTED + '}]"\n',
        "deep-ls.csv line 2: nested too deeply",
    ),
    "long-number.json": (
        '[{"image_id": ' + "1" * 5000 + ', "outcome": "rejected"}]',
        "long-number.json: bad JSON",
    ),
    # 2. ids beyond a 32-bit INTEGER (or negative), as numbers and as text, in every format
    "big.jsonl": (
        _line(image_id=2**70),
        "big.jsonl line 1: image_id 1180591620717411303424 is out",
    ),
    "big.csv": (
        "image_id,reviewed_caption,outcome\n" + "1" * 30 + ",,rejected\n",
        "big.csv line 2: image_id '111111111111111111111111111111' is out of range",
    ),
    "big.json": (
        json.dumps([{"image_id": 1, "caption_id": 2**31, "outcome": "rejected"}]),
        "big.json record 1: caption_id 2147483648 is out of range",
    ),
    "negative.jsonl": (_line(image_id=-1), "negative.jsonl line 1: image_id -1 is out of range"),
    "big-ls.json": (_task({"image_id": 2**63}), "big-ls.json record 1: image_id"),
    "big-min.json": (
        json.dumps([{"image_id": "2147483648.0", "caption": "x", "annotator": 1}]),
        "big-min.json record 1: image_id '2147483648.0' is out of range",
    ),
    "big-ls.csv": (
        "image_id,annotation_id,caption\n99999999999,5,a dot\n",
        "big-ls.csv line 2: image_id '99999999999' is out of range",
    ),
    "annotation-min.json": (
        json.dumps([{"image_id": 1, "caption": "x", "annotation_id": "a1"}]),
        "annotation-min.json record 1: annotation_id must be a whole number, got 'a1'",
    ),
    # 3. NUL in any text field, in every format
    "nul.jsonl": (
        _line(reviewed_caption="a\x00dot"),
        "nul.jsonl line 1: reviewed_caption holds a NUL",
    ),
    "nul.csv": (
        "image_id,reviewed_caption,outcome,reviewer\n1,a dot,edited,an\x00a\n",
        "nul.csv line 2: reviewer holds a NUL character at character 3",
    ),
    "nul-ls.json": (
        _task({}, completed_by="ana\x00@x"),
        "nul-ls.json record 1: reviewer holds a NUL",
    ),
    "nul-min.json": (
        json.dumps([{"image_id": 1, "caption": "a\x00", "annotator": 1}]),
        "nul-min.json record 1: caption holds a NUL",
    ),
    "nul-path.json": (
        json.dumps([{"path": "a\x00.jpg", "outcome": "rejected"}]),
        "nul-path.json record 1: path holds a NUL",
    ),
    # 4. a reviewer name longer than the column
    "long.jsonl": (_line(reviewer=LONG_NAME), "long.jsonl line 1: reviewer is 201 characters long"),
    "long-ls.json": (
        _task({}, completed_by={"email": LONG_NAME}),
        "long-ls.json record 1: reviewer",
    ),
    # 5. a lone surrogate, which JSON can write but no encoding can store
    "surrogate.json": (
        '[{"image_id": 1, "reviewed_caption": "a \\ud800 dot", "outcome": "edited"}]',
        "surrogate.json record 1: reviewed_caption holds a lone surrogate",
    ),
    "surrogate-min.json": (
        '[{"image_id": 1, "caption": {"text": ["\\udfff"]}, "annotator": 1}]',
        "surrogate-min.json record 1: caption holds a lone surrogate",
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_a_file_the_store_cannot_take_is_one_line_and_changes_nothing(reviewed, tmp_path, name):
    content, message = CASES[name]
    path = tmp_path / name
    path.write_text(content, encoding="utf-8", errors="surrogatepass", newline="")
    before = _reviews(reviewed)
    done = _import(reviewed, path)
    assert done.exit_code == 1 and isinstance(done.exception, SystemExit), done.output
    error = done.stderr.strip()
    assert error.startswith(f"Error: {message}") and "\n" not in error, error
    assert _reviews(reviewed) == before and len(before) == 1


def test_a_reviewer_option_the_store_cannot_take_is_refused(reviewed, tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text(_line(reviewed_caption="a green dot"))
    before = _reviews(reviewed)
    for name, message in [(LONG_NAME, "201 characters long"), ("a\x00b", "NUL character")]:
        done = _import(reviewed, path, "--reviewer", name)
        assert done.exit_code == 1 and message in done.stderr, done.output
    assert _reviews(reviewed) == before
    assert _import(reviewed, path, "--reviewer", "r" * 200).exit_code == 0
    assert _reviews(reviewed)[-1][5] == "r" * 200  # the column's full width is fine
