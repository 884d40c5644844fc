"""Evaluation with the real tiny model: a draft identical to its reference scores 1, the files
hold per-image and corpus scores, METEOR is skipped with a reason without Java, and the store's
drafts are scored against the reviews that kept them."""

from __future__ import annotations

import json

import imagefactory as make
import pytest
from captionkit import tiny_checkpoint
from typer.testing import CliRunner

from labeler.caption.job import caption_images
from labeler.cli import app
from labeler.errors import InputError
from labeler.files.scan import scan
from labeler.model.captioner import ShowTellCaptioner
from labeler.model.drafts import DecodeSettings
from labeler.store.models import Review
from labeler.training import metrics
from labeler.training.evaluate import evaluate_model, evaluate_store
from labeler.training.features import PixelReader
from labeler.training.readers import read_captions

SETTINGS = DecodeSettings(beam_size=3, max_len=8, min_len=5)  # five words: BLEU-4 is defined


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def data(model, tmp_path_factory):
    """Six test images whose first reference is the model's own draft, except for the last,
    whose only reference shares no word with it; and one train image that is never scored."""
    folder = tmp_path_factory.mktemp("data")
    paths = make.write_many(folder / "images", 7, size=(48, 40))
    captioner = ShowTellCaptioner.from_checkpoint(model, device="cpu")
    with PixelReader(captioner.preprocessing, workers=0) as reader:
        pixels, _ = reader.read(paths)
    drafts = [d.best.text for d in captioner.caption(pixels, SETTINGS)]
    lines = []
    for i, (path, draft) in enumerate(zip(paths, drafts, strict=True)):
        captions = [draft, "an unrelated second reference"] if i < 5 else ["zebra xylophone"]
        split = "train" if i == 6 else "test"
        lines.append({"file_name": f"images/{path.name}", "caption": captions, "split": split})
    source = folder / "captions.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return read_captions(source), drafts


def test_drafts_identical_to_a_reference_score_one(model, data, tmp_path):
    captions, drafts = data
    result = evaluate_model(model, captions, settings=SETTINGS, out_dir=tmp_path / "eval",
                            device="cpu", workers=0, batch_size=4, use_java=False)  # fmt: skip
    per_image = result.scores.per_image
    assert len(result.images) == 6 and [e.hypothesis for e in result.images] == drafts[:6]
    for key in [e.key for e in result.images[:5]]:
        assert per_image[key].bleu_4 == pytest.approx(1.0)
        assert per_image[key].rouge_l == pytest.approx(1.0)
    last = result.images[5].key
    assert per_image[last].bleu_4 < 0.01 and per_image[last].rouge_l == 0.0
    assert 0.5 < result.scores.bleu_1 < 1.0
    assert result.scores.meteor is None and result.scores.skipped == {"METEOR": "java not used"}
    lines = (tmp_path / "eval" / "results.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert len(lines) == 6 and first["hypothesis"] == drafts[0]
    assert first["references"][0] == drafts[0] and 0 < first["confidence"] <= 1
    assert first["scores"]["BLEU-4"] == pytest.approx(1.0) and first["scores"]["METEOR"] is None
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["images"] == 6 and summary["split"] == "test"
    assert summary["scores"]["BLEU-1"] == pytest.approx(result.scores.bleu_1)
    assert "METEOR" not in summary["scores"] and summary["skipped_metrics"]["METEOR"]
    with pytest.raises(InputError, match="exists"):
        evaluate_model(model, captions, settings=SETTINGS, out_dir=tmp_path / "eval",
                       device="cpu", workers=0, use_java=False)  # fmt: skip


def test_without_java_meteor_is_skipped_and_unreadable_images_are_counted(
    model, data, tmp_path, monkeypatch
):
    captions, _ = data
    monkeypatch.setattr(metrics, "find_java", lambda: None)
    captions.items[1].image_path.write_bytes(b"not an image any more")
    try:
        result = evaluate_model(model, captions, settings=SETTINGS, device="cpu", workers=0)
    finally:
        make.write_many(captions.items[1].image_path.parent, 1, size=(48, 40), start=1)
    assert result.scores.skipped == {"METEOR": "java not found"}
    assert len(result.images) == 5 and sum(result.failed.values()) == 1
    assert result.paths == []
    with pytest.raises(InputError, match="no images in split 'val'"):
        evaluate_model(model, captions, split="val", device="cpu", workers=0)


def test_store_drafts_are_scored_against_the_reviews_that_kept_them(model, store, tmp_path):
    make.write_many(tmp_path / "photos", 4, size=(48, 40))
    scan(store, [tmp_path / "photos"], workers=0)
    captioner = ShowTellCaptioner.from_checkpoint(model, device="cpu")
    caption_images(store, captioner, settings=SETTINGS, workers=0, procs=0, batch_size=4)
    with pytest.raises(InputError, match="no reviewed drafts"):
        evaluate_store(store)
    with store.write() as session:
        from labeler.store.models import Caption

        drafts = session.query(Caption).order_by(Caption.image_id).all()
        outcomes = [("accepted", None), ("edited", "a cat on a mat"), ("rejected", None)]
        for draft, (outcome, text) in zip(drafts, outcomes, strict=False):
            session.add(Review(image_id=draft.image_id, caption_id=draft.id, outcome=outcome,
                               text=text, fingerprint=f"f{draft.id}"))  # fmt: skip
    result = evaluate_store(store, out_dir=tmp_path / "eval", use_java=False)
    assert [e.references for e in result.images] == [[drafts[0].text], ["a cat on a mat"]]
    assert result.summary["reviews"] == {"accepted": 1, "edited": 1}
    assert result.scores.per_image[result.images[0].key].bleu_4 == pytest.approx(1.0)
    assert (tmp_path / "eval" / "summary.json").exists()


def test_evaluate_command(model, data, tmp_path):
    captions, _ = data
    args = ["evaluate", str(captions.source), "--model", str(model), "--beam", "2",
            "--out", str(tmp_path / "e"), "--no-java", "--device", "cpu", "--workers", "0",
            "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["images"] == 6 and summary["settings"]["beam_size"] == 2
    assert len(summary["paths"]) == 2
    # every decoding option `labeler caption` has, so evaluate can score what caption drafted
    same = ["--min-len", "2", "--n-best", "2", "--block-unk", "--block-repeats", "3",
            "--length-penalty", "0.5", "--max-len", "9", "--force"]  # fmt: skip
    result = CliRunner().invoke(app, args + same)
    assert result.exit_code == 0, result.output
    settings = json.loads(result.output)["settings"]
    assert (settings["min_len"], settings["n_best"], settings["block_unk"]) == (2, 2, True)
    assert (settings["block_repeat_ngram"], settings["length_penalty"]) == (3, 0.5)
    assert settings["max_len"] == 9
    missing = CliRunner().invoke(app, ["evaluate", str(captions.source)])
    assert missing.exit_code == 1 and "--model" in missing.output
