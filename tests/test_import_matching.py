"""`labeler import` into a store whose ids are not the file's (issue 11, item 15): records whose ids
do not fit match by path, then content hash; a path beats a disagreeing id; the result says how
many records matched which way; a record that matches no way still stops the import."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from labeler.cli import app
from labeler.errors import FormatError
from labeler.review.importer import import_reviews
from labeler.store.models import Caption, Dataset, Image, Model, Review

# image id -> (path, content hash, caption id, draft): a store scanned afresh, so an export of
# the old store names other ids (the issue: "caption 129 is not a draft of image 233").
IMAGES = {
    1: ("a.jpg", "a" * 64, 11, "a red dot"),
    2: ("b.jpg", "b" * 64, 12, "a blue dot"),
    3: ("c.jpg", "c" * 64, 13, "a green dot"),
}


@pytest.fixture
def rebuilt(store):
    with store.write() as session:
        session.add(Model(id=1, content_hash="ab" * 32, name="m", family="show-tell"))
        session.add(Dataset(id=1, name="d", root="/data", root_raw=b"/data"))
        session.flush()
        for image_id, (path, content_hash, caption_id, text) in IMAGES.items():
            session.add(Image(id=image_id, dataset_id=1, path=path, path_raw=path.encode(),
                              content_hash=content_hash, status="ok"))  # fmt: skip
            session.flush()
            session.add(_caption(caption_id, image_id, text))
    return store


def _caption(caption_id: int, image_id: int, text: str) -> Caption:
    return Caption(id=caption_id, image_id=image_id, model_id=1, settings_key="k", rank=0,
                   text=text, log_likelihood=-1.0, num_tokens=4, confidence=0.5, score=-1.0,
                   token_logprobs=[-0.25] * 4, margin=0.1, finished=True, repeated_ngram=False,
                   has_unknown=False)  # fmt: skip


def _file(tmp_path, *records: dict, name: str = "reviewed.jsonl"):
    path = tmp_path / name
    lines = [{"outcome": "rejected"} if "reviewed_caption" not in r else {} for r in records]
    path.write_text(
        "".join(json.dumps({**o, **r}) + "\n" for o, r in zip(lines, records, strict=True))
    )
    return path


def _reviews(store) -> list[tuple]:
    columns = (Review.image_id, Review.caption_id, Review.draft_text, Review.text, Review.outcome)
    with store.session() as session:
        return [tuple(r) for r in session.execute(select(*columns).order_by(Review.id))]


def test_records_whose_ids_fit_match_by_id(rebuilt, tmp_path):
    path = _file(tmp_path, {"image_id": 1, "caption_id": 11, "path": "a.jpg"}, {"image_id": 2})
    result = import_reviews(rebuilt, path)
    assert result.matched_by == {"id": 2, "path": 0, "content_hash": 0}
    assert _reviews(rebuilt) == [
        (1, 11, "a red dot", None, "rejected"),
        (2, 12, "a blue dot", None, "rejected"),
    ]


def test_ids_from_another_store_match_by_path(rebuilt, tmp_path):
    path = _file(
        tmp_path,
        # image 2 exists, but caption 11 is not its draft: ids from another store
        {"image_id": 2, "caption_id": 11, "path": "c.jpg", "reviewed_caption": "a green disc"},
        {"image_id": 233, "caption_id": 129, "path": "b.jpg", "reviewed_caption": "a blue dot"},
    )
    result = import_reviews(rebuilt, path)
    assert result.matched_by == {"id": 0, "path": 2, "content_hash": 0}
    assert (result.added, result.by_outcome) == (2, {"edited": 1, "accepted": 1})
    # the reviewed draft is the matched image's newest best draft
    assert _reviews(rebuilt) == [
        (3, 13, "a green dot", "a green disc", "edited"),
        (2, 12, "a blue dot", "a blue dot", "accepted"),
    ]


def test_a_path_wins_over_an_id_that_names_another_image(rebuilt, tmp_path):
    """Image 1 and its caption 11 fit each other, but the record's path is b.jpg: in a
    rebuilt store id 1 may be any image, so the review goes to the image at the path."""
    path = _file(tmp_path, {"image_id": 1, "caption_id": 11, "path": "b.jpg",
                            "reviewed_caption": "a blue disc"})  # fmt: skip
    result = import_reviews(rebuilt, path)
    assert result.matched_by == {"id": 0, "path": 1, "content_hash": 0}
    assert _reviews(rebuilt) == [(2, 12, "a blue dot", "a blue disc", "edited")]


def test_a_draft_the_reviewer_did_not_see_is_not_the_one_judged(rebuilt, tmp_path):
    """Matched by path, a record that says which draft it judged (draft_caption) is bound to
    the image's draft only when that is the same text: otherwise it keeps the judged text and
    no caption id, so it never counts as a verdict on a draft the reviewer did not see."""
    path = _file(
        tmp_path,
        {"image_id": 9, "path": "b.jpg", "draft_caption": "a red dot",
         "reviewed_caption": "a red dot"},
        {"image_id": 10, "path": "c.jpg", "draft_caption": "a  green dot",
         "reviewed_caption": "a green dot"},
    )  # fmt: skip
    import_reviews(rebuilt, path)
    assert _reviews(rebuilt) == [
        (2, None, "a red dot", "a red dot", "accepted"),
        (3, 13, "a green dot", "a green dot", "accepted"),
    ]


def test_a_content_hash_when_neither_id_nor_path_fits(rebuilt, tmp_path):
    path = _file(tmp_path, {"image_id": 99, "path": "moved/c.jpg", "content_hash": "c" * 64})
    result = import_reviews(rebuilt, path)
    assert result.matched_by == {"id": 0, "path": 0, "content_hash": 1}
    assert _reviews(rebuilt) == [(3, 13, "a green dot", None, "rejected")]


def test_an_absolute_path_counts_in_the_dataset_whose_root_holds_it(rebuilt, tmp_path):
    with rebuilt.write() as session:
        session.add(Dataset(id=2, name="sub", root="/data/sub", root_raw=b"/data/sub"))
        # the same file name as image 2, in a dataset whose root lies inside the first
        session.add(Image(id=4, dataset_id=2, path="b.jpg", path_raw=b"b.jpg",
                          content_hash="d" * 64, status="ok"))  # fmt: skip
        session.flush()
        session.add(_caption(14, 4, "a black dot"))
    path = _file(tmp_path, {"image_id": 50, "path": "/data/sub/b.jpg"}, {"path": "/data/a.jpg"})
    result = import_reviews(rebuilt, path)
    assert result.matched_by == {"id": 0, "path": 2, "content_hash": 0}
    assert [r[:2] for r in _reviews(rebuilt)] == [(4, 14), (1, 11)]
    ambiguous = _file(tmp_path, {"image_id": 50, "path": "b.jpg"}, name="ambiguous.jsonl")
    with pytest.raises(FormatError, match="line 1: path 'b.jpg' is in several datasets"):
        import_reviews(rebuilt, ambiguous)
    assert import_reviews(rebuilt, ambiguous, datasets=["sub"]).matched_by["path"] == 1


def test_a_record_that_matches_no_way_stops_the_import_naming_its_line(rebuilt, tmp_path):
    path = _file(
        tmp_path,
        {"image_id": 1},
        {"image_id": 2, "caption_id": 11, "path": "gone.jpg", "content_hash": "0" * 64},
    )
    with pytest.raises(FormatError) as raised:
        import_reviews(rebuilt, path)
    assert str(raised.value) == (
        "reviewed.jsonl line 2: caption 11 is not a draft of image 2; no image at path "
        "'gone.jpg' in the store; no image with content hash " + "0" * 64
    )
    assert _reviews(rebuilt) == []
    lone = _file(tmp_path, {"image_id": 2, "caption_id": 13}, name="lone.jsonl")
    with pytest.raises(FormatError, match="^lone.jsonl line 1: caption 13 is not a draft of "
                       "image 2$"):  # fmt: skip
        import_reviews(rebuilt, lone)
    assert _reviews(rebuilt) == []


def test_the_cli_says_how_records_matched(rebuilt, tmp_path):
    path = _file(
        tmp_path,
        {"image_id": 1},
        {"image_id": 7, "path": "b.jpg"},
        {"image_id": 8, "content_hash": "c" * 64},
    )
    runner = CliRunner()
    done = runner.invoke(app, ["import", str(path), "--db", rebuilt.url])
    assert done.exit_code == 0, done.output
    assert "3 records matched: 1 by id, 1 by path, 1 by content hash" in done.stdout
    again = runner.invoke(app, ["import", str(path), "--json", "--db", rebuilt.url])
    data = json.loads(again.stdout)
    assert data["matched_by"] == {"id": 1, "path": 1, "content_hash": 1}
    assert (data["added"], data["updated"], data["already"]) == (0, 0, 3)
