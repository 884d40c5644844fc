"""The examples in examples/ run as a user runs them (the venv's python and labeler, in a fresh
folder) on generated images and the tiny checkpoint, and their outputs are checked against the
store: a broken example fails here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import imagefactory as make
import pandas as pd
import pytest
from captionkit import tiny_checkpoint

import labeler
from labeler.model.checkpoint import load_checkpoint

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
IMAGES = 8


def run(*command, cwd, **env):
    """Run a command with the venv's python and labeler first on PATH; its stdout."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    done = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, PATH=path, **env), timeout=300)  # fmt: skip
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture
def drafted(tmp_path, model):
    """The default store ($LABELER_DB, set by conftest) with drafts of photos/, made in-process."""
    make.write_many(tmp_path / "photos", IMAGES, size=(48, 40))
    with labeler.open_store() as store:
        store.scan("photos", tmp_path / "photos", workers=0)
        store.caption(model, device="cpu", max_len=8, procs=0, workers=0, batch_size=4)
        yield store


def _reviews(store):
    reviewed = store.drafts(review=["reviewed"], sort="id").to_pandas()
    return dict(zip(reviewed["path"], reviewed["review_outcome"], strict=True))


def test_filter_csv_export_keeps_the_drafts_below_the_threshold(drafted, tmp_path):
    run("labeler", "export", "-f", "csv", "-o", "drafts.csv", cwd=tmp_path)
    exported = pd.read_csv(tmp_path / "drafts.csv", keep_default_na=False)
    threshold = sorted(exported["p_accept"])[IMAGES // 2]
    out = run(sys.executable, EXAMPLES / "filter_csv_export.py", "drafts.csv",
              "--threshold", repr(threshold), "-o", "worklist.csv", cwd=tmp_path)  # fmt: skip

    worklist = pd.read_csv(tmp_path / "worklist.csv", keep_default_na=False)
    below = exported[exported["p_accept"] < threshold]
    assert 0 < len(worklist) == len(below) < IMAGES
    assert (worklist["p_accept"] < threshold).all() and worklist["p_accept"].is_monotonic_increasing
    assert set(worklist["image_id"]) == set(below["image_id"])
    assert list(worklist.columns) == list(exported.columns)
    assert f"{len(below)} of {IMAGES} drafts below {threshold!r} -> worklist.csv" in out
    bands = re.findall(r"^  (\d\.\d)-(\d\.\d)  (\d+)$", out, re.M)
    printed = {(float(low), float(high)): int(n) for low, high, n in bands}
    assert len(printed) == 5 and sum(printed.values()) == IMAGES
    for (low, high), count in printed.items():
        in_band = exported["p_accept"].between(low, high, inclusive="both" if low == 0 else "right")
        assert count == in_band.sum(), (low, high)

    # The worklist is a review file: filled in, it imports back.
    worklist["outcome"] = "rejected"
    worklist.to_csv(tmp_path / "worklist.csv", index=False)
    run("labeler", "import", "worklist.csv", "--reviewer", "ana", cwd=tmp_path)
    assert _reviews(drafted) == dict.fromkeys(below["path"], "rejected")


def test_python_api_script_runs_end_to_end(tmp_path, model):
    make.write_many(tmp_path / "photos", IMAGES, size=(48, 40))
    out = run(sys.executable, EXAMPLES / "python_api.py", "--db", "api.db", "--images", "photos",
              "--model", model, "--device", "cpu", cwd=tmp_path)  # fmt: skip

    assert f"scanned {IMAGES} files: {{'ok': {IMAGES}}}" in out
    assert f"captioned {IMAGES} images with show-tell-" in out
    with labeler.open_store(tmp_path / "api.db", create=False) as store:
        drafts = store.drafts().to_pandas()
        review = pd.read_csv(tmp_path / "review.csv", keep_default_na=False)
        doubtful = drafts[drafts["p_accept"] <= 0.5]
        assert len(review) == len(doubtful) > 0 and (review["p_accept"] <= 0.5).all()
        assert f"{len(review)} drafts to review in review.csv" in out
        # The stand-in reviewer rejects the flagged drafts and accepts the others.
        flagged = ~doubtful["finished"] | doubtful["repeated_ngram"] | doubtful["has_unknown"]
        outcome = flagged.map({True: "rejected", False: "accepted"})
        expected = dict(zip(doubtful["path"], outcome, strict=True))
        assert _reviews(store) == expected
        assert set(store.drafts(review=["reviewed"]).to_pandas()["reviewer"]) == {"example"}
        outcomes = dict(store.stats().outcomes)
    assert f"imported {len(review)} reviews: {outcomes}" in out
    assert f"{IMAGES} drafts, reviews: {outcomes}" in out
    assert drafts["path"].iloc[0] in out.split("drafts to review")[0]  # the worst draft shown


def _annotated(task, number, **annotation):
    """A task as Label Studio's JSON export returns it (tests/formats/test_formats_labelstudio)."""
    return {
        "id": 100 + number, "data": task["data"], "predictions": task["predictions"],
        "annotations": [dict(annotation, id=number, completed_by=1, task=100 + number,
                             created_at="2026-11-20T10:00:00Z", updated_at="2026-11-20T10:00:00Z")]
        if annotation else [],
        "drafts": [], "meta": {}, "project": 1, "inner_id": number, "total_annotations": 1,
    }  # fmt: skip


def _text(text):
    return [{"id": "c0", "from_name": "caption", "to_name": "image", "type": "textarea",
             "value": {"text": [text]}}] if text is not None else []  # fmt: skip


def test_label_studio_round_trip_exports_then_imports_the_reviews(drafted, tmp_path):
    script = EXAMPLES / "label_studio_round_trip.sh"
    run("bash", script, "export", cwd=tmp_path, DOCUMENT_ROOT=str(tmp_path))
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert len(tasks) == IMAGES and (tmp_path / "tasks.config.xml").is_file()
    for task in tasks:
        link = task["data"]["image"]
        assert link.startswith("/data/local-files/?d=photos/")
        assert (tmp_path / link.split("?d=")[1]).is_file()

    draft = [t["predictions"][0]["result"][0]["value"]["text"][0] for t in tasks]
    exported = [
        _annotated(tasks[0], 1, was_cancelled=False, result=_text(draft[0])),
        _annotated(tasks[1], 2, was_cancelled=False, result=_text("a reviewer wrote this")),
        _annotated(tasks[2], 3, was_cancelled=True, result=[]),
        _annotated(tasks[3], 4, was_cancelled=False, result=[]),  # emptied and submitted
        *(_annotated(task, n) for n, task in enumerate(tasks[4:], start=5)),
    ]
    (tmp_path / "project-1-at-2026-11-20.json").write_text(json.dumps(exported))
    out = run("bash", script, "import", "project-1-at-2026-11-20.json", cwd=tmp_path)

    paths = [t["data"]["path"] for t in tasks]
    expected = {paths[0]: "accepted", paths[1]: "edited", paths[2]: "skipped",
                paths[3]: "rejected"}  # fmt: skip
    assert _reviews(drafted) == expected
    assert drafted.stats().outcomes == {"accepted": 1, "edited": 1, "skipped": 1, "rejected": 1}
    assert out.startswith("4 reviews added")  # labeler import, then labeler stats:
    assert "Expected calibration error of p_accept" in out and "AUROC for acceptance" in out


@pytest.mark.slow
def test_train_karpathy_trains_and_evaluates_on_generated_scenes(tmp_path):
    run("labeler", "scenes", "scenes", "--count", "40", "--size", "48", "--seed", "1",
        cwd=tmp_path)  # fmt: skip
    tiny = ["--epochs", "1", "--image-size", "32", "--embed-size", "16", "--hidden-size", "16",
            "--min-word-count", "1", "--batch-size", "8"]  # fmt: skip
    run("bash", EXAMPLES / "train_karpathy.sh", "scenes/dataset_scenes.json", "scenes", "run",
        *tiny, cwd=tmp_path)  # fmt: skip

    loaded = load_checkpoint(tmp_path / "run" / "model.pt")
    assert loaded.config.backbone == "efficientnet_lite0"  # the script's own options
    assert loaded.config.feature_taps == (2, 5, 10) and loaded.config.embed_size == 16
    assert loaded.training["best_epoch"] == 1  # --epochs 1 won over the script's 20
    summary = json.loads((tmp_path / "run" / "eval" / "summary.json").read_text())
    assert summary["split"] == "test" and summary["images"] == 4  # 10% of 40 scenes
    assert {"BLEU-4", "CIDEr", "ROUGE-L"} <= set(summary["scores"])
    results = (tmp_path / "run" / "eval" / "results.jsonl").read_text().splitlines()
    assert len(results) == 4 and all(json.loads(line)["hypothesis"] for line in results)
