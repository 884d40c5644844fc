"""Label Studio annotations into the store (issue 11, item 4): one annotation is one review through
every export file and format (JSON, JSON_MIN and CSV made by the SDK's own converter); a newer
version replaces the stored review in place, an older or the same one changes nothing."""

from __future__ import annotations

import copy
import json

import pytest
from label_studio_sdk.converter import Converter
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from labeler.cli import app
from labeler.formats.labelstudio import LABEL_CONFIG
from labeler.review.importer import import_reviews
from labeler.store.models import Caption, Dataset, Image, Model, Review

DRAFTS = {1: "a red dot", 2: "a blue dot", 3: "a green dot"}
EARLY, LATE = "2026-11-20T10:00:00.000000Z", "2026-11-21T09:30:00.500000Z"


@pytest.fixture
def drafted(store):
    with store.write() as session:
        session.add(Model(id=1, content_hash="ab" * 32, name="m", family="show-tell"))
        session.add(Dataset(id=1, name="d", root="/data", root_raw=b"/data"))
        session.flush()
        for image_id, text in DRAFTS.items():
            session.add(Image(id=image_id, dataset_id=1, path=f"{image_id}.jpg",
                              path_raw=f"{image_id}.jpg".encode(), status="ok"))  # fmt: skip
            session.flush()
            session.add(
                Caption(id=10 + image_id, image_id=image_id, model_id=1, settings_key="k",
                        rank=0, text=text, log_likelihood=-1.0, num_tokens=4, confidence=0.5,
                        score=-1.0, token_logprobs=[-0.25] * 4, margin=0.1, finished=True,
                        repeated_ngram=False, has_unknown=False)
            )  # fmt: skip
    return store


def _annotation(annotation_id: int, text: str, *, by: int = 1, at: str = EARLY) -> dict:
    return {
        "id": annotation_id, "completed_by": by, "was_cancelled": False, "created_at": EARLY,
        "updated_at": at, "project": 3, "lead_time": 4.5,
        "result": [{"id": "r", "from_name": "caption", "to_name": "image", "type": "textarea",
                    "value": {"text": [text]}}],
    }  # fmt: skip


def _export(tmp_path, name: str, annotations: dict[int, list[dict]]):
    """Label Studio's JSON export of one task per image, with these annotations per image."""
    tasks = [
        {"id": 100 + image_id, "project": 3,
         "data": {"image": f"/data/local-files/?d={image_id}.jpg", "image_id": image_id,
                  "path": f"{image_id}.jpg", "caption_id": 10 + image_id,
                  "draft_caption": text, "alternatives": ""},
         "annotations": annotations.get(image_id, []), "predictions": []}
        for image_id, text in DRAFTS.items()
    ]  # fmt: skip
    path = tmp_path / name
    path.write_text(json.dumps(tasks, indent=2))
    return path


def _flat(tmp_path, exported, flavour: str):
    """JSON_MIN or CSV made from a JSON export by the converter Label Studio runs for them."""
    converter = Converter(LABEL_CONFIG, project_dir=None, download_resources=False)
    out = tmp_path / flavour
    if flavour == "JSON_MIN":
        converter.convert_to_json_min(str(exported), str(out), is_dir=False)
        return out / "result.json"
    converter.convert_to_csv(str(exported), str(out), is_dir=False, sep=",")
    return out / "result.csv"


def _reviews(store) -> list[tuple]:
    columns = (Review.id, Review.image_id, Review.external_id, Review.text, Review.outcome,
               Review.reviewer, Review.draft_text, Review.caption_id)  # fmt: skip
    with store.session() as session:
        return [tuple(r) for r in session.execute(select(*columns).order_by(Review.id))]


def test_one_annotation_is_one_review_through_every_file_and_format(drafted, tmp_path):
    annotations = {1: [_annotation(21, "a red dot")], 2: [_annotation(22, "a navy dot")]}
    first = _export(tmp_path, "project-3-at-1.json", annotations)
    result = import_reviews(drafted, first)
    assert (result.added, result.updated, result.already) == (2, 0, 0)
    stored = _reviews(drafted)
    assert stored == [
        (1, 1, "label-studio:21:image:1", "a red dot", "accepted", "1", "a red dot", 11),
        (2, 2, "label-studio:22:image:2", "a navy dot", "edited", "1", "a blue dot", 12),
    ]
    # the same annotations in the other formats, and in a later export that adds one
    later = {**annotations, 3: [_annotation(23, "a lime dot")]}
    files = [_flat(tmp_path, first, "JSON_MIN"), _flat(tmp_path, first, "CSV"),
             _export(tmp_path, "project-3-at-2.json", later)]  # fmt: skip
    counts = [
        (r.added, r.updated, r.already) for r in map(lambda f: import_reviews(drafted, f), files)
    ]
    assert counts == [(0, 0, 2), (0, 0, 2), (1, 0, 2)]
    assert _reviews(drafted)[:2] == stored and len(_reviews(drafted)) == 3


def test_a_newer_version_replaces_the_review_in_place(drafted, tmp_path):
    import_reviews(drafted, _export(tmp_path, "a.json", {2: [_annotation(22, "a navy dot")]}))
    (before,) = _reviews(drafted)
    edited = _annotation(22, "a blue dot", by=7, at=LATE)  # the draft restored: accepted
    newer = _export(tmp_path, "b.json", {2: [edited]})
    result = import_reviews(drafted, newer)
    assert (result.added, result.updated, result.already) == (0, 1, 0)
    (after,) = _reviews(drafted)
    assert after == (before[0], 2, before[2], "a blue dot", "accepted", "7", "a blue dot", 12)
    with drafted.session() as session:
        source, updated_at = session.execute(
            select(Review.source, Review.external_updated_at)
        ).one()  # fmt: skip
    assert source == str(newer) and updated_at.isoformat().startswith("2026-11-21T09:30:00.5")
    # the older version again, through another format: nothing changes
    older = _flat(tmp_path, tmp_path / "a.json", "CSV")
    assert (import_reviews(drafted, older).already, _reviews(drafted)) == (1, [after])
    assert import_reviews(drafted, newer).already == 1


def test_one_file_holding_two_versions_keeps_the_newer(drafted, tmp_path):
    rows = [{"image_id": 1, "path": "1.jpg", "draft_caption": "a red dot", "caption": text,
             "annotation_id": 21, "annotator": 1, "updated_at": at}
            for text, at in (("a pink dot", LATE), ("a rose dot", EARLY))]  # fmt: skip
    (tmp_path / "min.json").write_text(json.dumps(rows))
    result = import_reviews(drafted, tmp_path / "min.json")
    assert (result.added, result.already) == (1, 1)
    assert [r[3] for r in _reviews(drafted)] == ["a pink dot"]


def test_reviews_imported_before_annotations_were_named_are_recognised(drafted, tmp_path):
    path = _export(tmp_path, "old.json", {1: [_annotation(21, "a red dot")]})
    import_reviews(drafted, path)
    with drafted.write() as session:  # as an import before migration 0004 left it
        session.execute(update(Review).values(external_id=None, external_updated_at=None))
    assert import_reviews(drafted, path).already == 1
    assert [r[2] for r in _reviews(drafted)] == ["label-studio:21:image:1"]
    flat = _flat(tmp_path, path, "JSON_MIN")
    assert (import_reviews(drafted, flat).already, len(_reviews(drafted))) == (1, 1)


def test_other_files_keep_the_fingerprint_rule(drafted, tmp_path):
    line = json.dumps({"image_id": 1, "outcome": "rejected"}) + "\n"
    (tmp_path / "a.jsonl").write_text(line)
    (tmp_path / "b.jsonl").write_text(line + "\n")
    counts = [
        import_reviews(drafted, tmp_path / n).added for n in ("a.jsonl", "a.jsonl", "b.jsonl")
    ]
    assert counts == [1, 0, 1]  # a later file saying the same is a newer review
    assert {r[2] for r in _reviews(drafted)} == {None}


def test_the_cli_counts_updated_reviews(drafted, tmp_path):
    runner = CliRunner()
    db = ["--db", drafted.url]
    first = _export(tmp_path, "a.json", {3: [_annotation(23, "a lime dot")]})
    assert runner.invoke(app, ["import", str(first), *db]).exit_code == 0
    task = json.loads(first.read_text())
    newer = copy.deepcopy(task)
    newer[2]["annotations"][0].update(updated_at=LATE)
    newer[2]["annotations"][0]["result"][0]["value"]["text"] = ["an olive dot"]
    (tmp_path / "b.json").write_text(json.dumps(newer))
    done = runner.invoke(app, ["import", str(tmp_path / "b.json"), *db])
    assert done.exit_code == 0, done.output
    assert "0 reviews added, 1 updated, 0 already imported (1 edited)" in done.stdout
    data = json.loads(
        runner.invoke(app, ["import", str(tmp_path / "b.json"), "--json", *db]).stdout
    )
    assert (data["added"], data["updated"], data["already"]) == (0, 0, 1)
    with drafted.session() as session:
        assert session.scalar(select(func.count()).select_from(Review)) == 1
