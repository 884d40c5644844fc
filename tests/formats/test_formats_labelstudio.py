"""Label Studio: tasks checked by the SDK's validator; its three exports parsed back.

The JSON export sample follows Label Studio's documented task format (labelstud.io/guide/
task_format); the JSON_MIN and CSV samples are produced from it by the SDK's own converter,
which is the code Label Studio runs for those export buttons.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
from formats.test_formats_rows import make_row, with_alternatives
from label_studio_sdk.converter import Converter  # noqa: E402
from label_studio_sdk.label_interface import LabelInterface  # noqa: E402

from labeler.errors import FormatError, InputError
from labeler.formats.labelstudio import LABEL_CONFIG, config_path, write_label_studio
from labeler.formats.reviews import detect_format, read_reviews


def test_every_prediction_passes_the_label_studio_validator(tmp_path):
    dest = tmp_path / "tasks.json"
    rows = [
        with_alternatives(make_row(1, root=tmp_path), "a red box", 'a "square", red'),
        make_row(2, root=tmp_path, text="café, 東京\nnew line"),
        # confidence standing in for p_accept: rounding can push exp(0) a hair over 1
        replace(
            make_row(3, root=tmp_path), confidence=1.0000000000000002, p_accept=1.0000000000000002
        ),
    ]
    result = write_label_studio(rows, dest, document_root=tmp_path)
    assert result.count == 3 and result.paths == [dest, tmp_path / "tasks.config.xml"]
    config = config_path(dest).read_text(encoding="utf-8")
    interface = LabelInterface(config)
    tasks = json.loads(dest.read_text(encoding="utf-8"))
    interface.validate()
    predictions = [p for t in tasks for p in t["predictions"]]
    assert len(predictions) == 3  # one per task: the alternatives are no predictions
    for prediction in predictions:
        assert interface.validate_prediction(prediction, return_errors=True) == []
    [best] = tasks[0]["predictions"]
    assert best["model_version"] == "show-tell-ab12cd"
    assert best["score"] == rows[0].p_accept != rows[0].confidence  # scored by p_accept
    assert best["result"][0]["value"]["text"] == [rows[0].text]
    assert all(0 <= p["score"] <= 1 for p in predictions)
    assert tasks[2]["predictions"][0]["score"] == 1.0
    data = tasks[0]["data"]
    assert data["image"] == "/data/local-files/?d=images/img_001.png"
    assert data["image_id"] == 1 and data["log_likelihood"] == rows[0].log_likelihood
    assert data["draft_caption"] == rows[0].text and data["confidence"] == rows[0].confidence
    assert data["p_accept"] == rows[0].p_accept


def test_alternatives_are_data_shown_by_the_config_not_predictions(tmp_path):
    """Label Studio averages the scores of a task's predictions of one model version, so the
    alternatives must not be predictions: the task's score is the best draft's p_accept."""
    dest = tmp_path / "tasks.json"
    alternatives = with_alternatives(make_row(1, root=tmp_path), "a red box", 'a "square",\nred')
    rows = [alternatives, make_row(2, root=tmp_path)]
    write_label_studio(rows, dest, document_root=tmp_path)
    config = config_path(dest).read_text(encoding="utf-8")
    interface = LabelInterface(config)
    interface.validate()
    assert '<Text name="alternatives" value="$alternatives"/>' in config
    tasks = json.loads(dest.read_text(encoding="utf-8"))
    scores = [[p["score"] for p in t["predictions"]] for t in tasks]
    assert scores == [[rows[0].p_accept], [rows[1].p_accept]]
    first, second = rows[0].alternatives
    assert tasks[0]["data"]["alternatives"] == (
        f'a red box  ({first.p_accept:.2f})\na "square", red  ({second.p_accept:.2f})'
    )
    # Label Studio refuses a task lacking a data key the config names, so every task has it.
    for task in tasks:
        for tag in interface.objects:
            assert isinstance(task["data"][tag.value_name], str)
    assert tasks[1]["data"]["alternatives"] == ""

    # Without alternatives (n-best 1) the config is the plain one.
    write_label_studio([make_row(3, root=tmp_path)], tmp_path / "one.json", document_root=tmp_path)
    assert config_path(tmp_path / "one.json").read_text(encoding="utf-8") == LABEL_CONFIG


def test_image_urls(tmp_path):
    row = make_row(1, root=tmp_path / "root", path="a b/#1 & é.png")
    write_label_studio([row], tmp_path / "t.json", url_prefix="https://cdn.example/set/")
    task = json.loads((tmp_path / "t.json").read_text())[0]
    assert task["data"]["image"] == "https://cdn.example/set/a%20b/%231%20%26%20%C3%A9.png"
    write_label_studio([row], tmp_path / "u.json", document_root=tmp_path)
    task = json.loads((tmp_path / "u.json").read_text())[0]
    assert task["data"]["image"] == "/data/local-files/?d=root/a%20b/%231%20%26%20%C3%A9.png"
    with pytest.raises(InputError, match=r"image .*img_009.png \(id 9\) is not under"):
        write_label_studio([make_row(9)], tmp_path / "v.json", document_root=tmp_path)
    assert not (tmp_path / "v.json").exists() and not (tmp_path / "v.config.xml").exists()
    with pytest.raises(InputError, match="either a document root"):
        write_label_studio([row], tmp_path / "w.json")


# --- parsing the exports ------------------------------------------------------------------


def annotation(id_, text, *, by=1, at="2024-05-01T10:00:00.000000Z", cancelled=False):
    result = (
        []
        if text is None
        else [
            {
                "value": {"text": text if isinstance(text, list) else [text]},
                "id": f"r{id_}",
                "from_name": "caption",
                "to_name": "image",
                "type": "textarea",
                "origin": "prediction-changed",
            }
        ]
    )
    return {
        "id": id_,
        "completed_by": by,
        "result": result,
        "was_cancelled": cancelled,
        "ground_truth": False,
        "created_at": at,
        "updated_at": at,
        "draft_created_at": None,
        "lead_time": 12.5,
        "prediction": {},
        "result_count": len(result),
        "unique_id": f"u{id_}",
        "import_id": None,
        "last_action": None,
        "bulk_created": False,
        "task": 0,
        "project": 3,
        "updated_by": by,
        "parent_prediction": 7,
        "parent_annotation": None,
        "last_created_by": None,
    }


def label_studio_export(tmp_path):
    """A JSON export of seven tasks made from our own tasks file, as Label Studio returns it."""
    rows = [make_row(i, root=tmp_path) for i in range(1, 8)]
    write_label_studio(rows, tmp_path / "tasks.json", document_root=tmp_path)
    tasks = json.loads((tmp_path / "tasks.json").read_text(encoding="utf-8"))
    bob = {"id": 2, "first_name": "Bob", "last_name": "", "email": "bob@example.com"}
    late = "2024-05-02T09:30:00.123456Z"
    annotations = {
        1: [annotation(11, rows[0].text)],  # submitted as predicted: accepted
        2: [annotation(21, "an old edit"), annotation(22, "a blue square", by=bob, at=late)],
        3: [annotation(31, None, cancelled=True)],  # skipped
        4: [],  # nobody looked at it
        5: [annotation(51, None)],  # the reviewer deleted the draft and submitted: rejected
        6: [annotation(61, ["a red square", "on white"])],  # two text lines
        7: [annotation(71, "ignored", at=late, cancelled=True), annotation(72, "a green square")],
    }
    exported = []
    for number, task in enumerate(tasks, start=1):
        exported.append(
            {
                "id": 100 + number,
                "data": task["data"],
                "annotations": annotations[number],
                "predictions": [
                    dict(p, id=number, task=100 + number, created_ago="3 hours")
                    for p in task["predictions"]
                ],
                "drafts": [],
                "meta": {},
                "created_at": "2024-05-01T08:00:00Z",
                "updated_at": late,
                "inner_id": number,
                "total_annotations": 1,
                "cancelled_annotations": 0,
                "total_predictions": 1,
                "comment_count": 0,
                "unresolved_comment_count": 0,
                "last_comment_updated_at": None,
                "project": 3,
                "updated_by": 1,
                "file_upload": None,
                "comment_authors": [],
            }
        )
    for number, task in enumerate(exported, start=1):
        for item in task["annotations"]:
            item["task"] = 100 + number
    path = tmp_path / "project-3-at-2024-05-02.json"
    path.write_text(json.dumps(exported, indent=2), encoding="utf-8")
    return path, rows


def test_json_export(tmp_path):
    path, rows = label_studio_export(tmp_path)
    assert detect_format(path) == "label-studio"
    records = read_reviews(path)
    got = [(r.image_id, r.outcome, r.reviewed_text, r.reviewer) for r in records]
    assert got == [
        (1, "accepted", rows[0].text, "1"),
        (2, "edited", "a blue square", "bob@example.com"),
        (3, "skipped", None, "1"),
        (5, "rejected", None, "1"),
        (6, "edited", "a red square on white", "1"),
        (7, "edited", "a green square", "1"),
    ]
    assert records[1].reviewed_at.isoformat() == "2024-05-02T09:30:00.123456+00:00"
    assert records[0].where == "project-3-at-2024-05-02.json record 1"
    assert records[0].caption_id == rows[0].caption_id and records[0].path == rows[0].path
    assert records[0].draft_text == rows[0].text


@pytest.mark.parametrize("flavour", ["JSON_MIN", "CSV"])
def test_flat_exports_made_by_the_label_studio_converter(tmp_path, flavour):
    path, rows = label_studio_export(tmp_path)
    converter = Converter(LABEL_CONFIG, project_dir=None, download_resources=False)
    out = tmp_path / "out"
    if flavour == "JSON_MIN":
        converter.convert_to_json_min(str(path), str(out), is_dir=False)
        exported, expected_format = out / "result.json", "label-studio-min"
    else:
        converter.convert_to_csv(str(path), str(out), is_dir=False, sep=",")
        exported, expected_format = out / "result.csv", "label-studio-csv"
    assert detect_format(exported) == expected_format
    got = sorted((r.image_id, r.outcome, r.reviewed_text) for r in read_reviews(exported))
    assert got == [  # one per annotation not cancelled; task 4 had none
        (1, "accepted", rows[0].text),
        (2, "edited", "a blue square"),
        (2, "edited", "an old edit"),
        (5, "rejected", None),
        (6, "edited", "a red square on white"),
        (7, "edited", "a green square"),
    ]
    bob = [r for r in read_reviews(exported) if r.reviewed_text == "a blue square"][0]
    assert bob.reviewer == "bob@example.com" and bob.reviewed_at.year == 2024


def test_malformed_label_studio_exports_name_the_record(tmp_path):
    path, _ = label_studio_export(tmp_path)
    tasks = json.loads(path.read_text(encoding="utf-8"))
    cases = {
        "record 2: caption is not text": lambda t: t[1]["annotations"][1]["result"][0][
            "value"
        ].update(text=[42]),
        "record 3: the task data has no image_id": lambda t: [
            t[2]["data"].pop(k) for k in ("image_id", "path", "content_hash")
        ],
        "record 1: image_id must be a whole number": lambda t: t[0]["data"].update(image_id="x"),
        "record 5: 'annotations' is not a list": lambda t: t[4].update(annotations={}),
    }
    for message, damage in cases.items():
        broken = copy.deepcopy(tasks)
        damage(broken)
        path.write_text(json.dumps(broken), encoding="utf-8")
        with pytest.raises(FormatError, match=message):
            read_reviews(path, fmt="label-studio")


def test_the_reviewer_is_the_annotators_email_else_name_else_id(tmp_path):
    path, _ = label_studio_export(tmp_path)
    tasks = json.loads(path.read_text(encoding="utf-8"))
    by_task = {t["data"]["image_id"]: t["annotations"] for t in tasks}
    by_task[1][0].update(completed_by=1, created_username=" carol@example.com, 1")
    dan = {"id": 4, "first_name": "Dan", "last_name": "Lee", "email": ""}
    by_task[5][0].update(completed_by=dan, updated_by=4)
    # updated_by names someone else, who edited the annotation later: not the annotator
    by_task[6][0].update(completed_by=1, updated_by="eve@example.com, 9")
    by_task[7][1].update(completed_by=3, updated_by=3)
    path.write_text(json.dumps(tasks), encoding="utf-8")
    got = {r.image_id: r.reviewer for r in read_reviews(path)}
    assert got == {
        1: "carol@example.com",
        2: "bob@example.com",
        3: "1",
        5: "Dan Lee",
        6: "1",
        7: "3",
    }


@pytest.mark.parametrize("fmt", ["label-studio-min", "label-studio-csv"])
def test_flat_exports_reviewer(tmp_path, fmt):
    rows = [make_row(i, root=tmp_path) for i in range(1, 6)]
    shapes = [
        {"annotator": 1},
        {"annotator": "carol@example.com"},
        {"annotator": 1, "created_username": "frank@example.com, 1"},
        {"annotator": "7", "updated_by": "gina@example.com, 7"},
        {"annotator": 2, "updated_by": "hal@example.com, 9"},
    ]
    records = [
        {
            "image_id": row.image_id,
            "draft_caption": row.text,
            "caption": "an edit",
            "annotation_id": 10 + row.image_id,
            "updated_at": "2024-05-01T10:00:00Z",
            **shape,
        }
        for row, shape in zip(rows, shapes, strict=True)
    ]
    if fmt == "label-studio-min":
        path = tmp_path / "min.json"
        path.write_text(json.dumps(records), encoding="utf-8")
    else:
        path = tmp_path / "ls.csv"
        columns = sorted({k for r in records for k in r})
        lines = [",".join(columns)]
        lines += [",".join(f'"{r.get(c, "")}"' for c in columns) for r in records]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert detect_format(path) == fmt
    assert [r.reviewer for r in read_reviews(path)] == [
        "1",
        "carol@example.com",
        "frank@example.com",
        "gina@example.com",
        "2",
    ]
