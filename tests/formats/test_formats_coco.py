"""COCO captions: results and ground truth loaded with pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import replace

import pytest
from formats.test_formats_rows import make_row
from pycocotools.coco import COCO  # noqa: E402

from labeler.errors import InputError
from labeler.formats.coco import write_coco


def quiet_coco(path=None) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        return COCO(str(path)) if path else COCO()


def load_res(coco: COCO, path):
    with contextlib.redirect_stdout(io.StringIO()):
        return coco.loadRes(str(path))


def reviewed_rows():
    one = make_row(1, text="a dog")
    return [
        replace(one, review_outcome="accepted", review_text="a dog"),
        # the same image drafted by a second model, with a higher p_accept (a lower confidence)
        replace(
            one,
            model_name="other",
            caption_id=5,
            text="a dog running",
            confidence=0.01,
            p_accept=0.99,
            review_outcome="accepted",
        ),
        replace(make_row(2), review_outcome="edited", review_text='a "cat", asleep'),
        replace(make_row(3), review_outcome="rejected"),
        replace(make_row(4), review_outcome="skipped"),
        make_row(5),
        replace(make_row(6, width=None), review_outcome="edited", review_text="a car"),
    ]


def test_results_and_ground_truth_load_together(tmp_path):
    results, truth = tmp_path / "results.json", tmp_path / "gt.json"
    written = write_coco(iter(reviewed_rows()), results, ground_truth=truth)
    assert written.count == 3 and written.paths == [results, truth]
    gt = quiet_coco(truth)
    assert sorted(gt.getImgIds()) == [1, 2, 6]
    captions = {a["image_id"]: [] for a in gt.dataset["annotations"]}
    for a in gt.dataset["annotations"]:
        captions[a["image_id"]].append(a["caption"])
    assert captions == {1: ["a dog", "a dog running"], 2: ['a "cat", asleep'], 6: ["a car"]}
    assert gt.imgs[1] == {"id": 1, "file_name": "images/img_001.png", "width": 4, "height": 3}
    assert "width" not in gt.imgs[6]
    res = load_res(gt, results)
    assert sorted(res.getImgIds()) == [1, 2, 6]
    by_image = {a["image_id"]: a["caption"] for a in res.dataset["annotations"]}
    assert by_image[1] == "a dog running"  # one result per image: the highest p_accept


def test_results_alone_hold_one_best_draft_per_image(tmp_path):
    write_coco(iter(reviewed_rows()), tmp_path / "r.json")
    results = json.loads((tmp_path / "r.json").read_text())
    assert [r["image_id"] for r in results] == [1, 2, 3, 4, 5, 6]
    assert results[0] == {"image_id": 1, "caption": "a dog running"}


def test_load_res_refuses_unknown_images_which_is_why_results_follow_the_ground_truth(tmp_path):
    write_coco(iter(reviewed_rows()), tmp_path / "all.json")  # images 3-5 have no reference
    write_coco(iter(reviewed_rows()), tmp_path / "r.json", ground_truth=tmp_path / "gt.json")
    gt = quiet_coco(tmp_path / "gt.json")
    with pytest.raises(AssertionError):
        load_res(gt, tmp_path / "all.json")


def test_empty_ground_truth_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(InputError, match="ground truth would be empty"):
        write_coco(iter([make_row(1)]), tmp_path / "r.json", ground_truth=tmp_path / "gt.json")
    assert list(tmp_path.iterdir()) == []


def test_results_and_ground_truth_must_differ(tmp_path):
    with pytest.raises(InputError, match="the same file is given twice"):
        write_coco([], tmp_path / "r.json", ground_truth=tmp_path / "r.json")
