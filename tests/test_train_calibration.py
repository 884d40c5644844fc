"""The end of training: the checkpoint carries its decoding defaults and the calibrator fitted on
its validation drafts (or the reason it has none), and the judge says what "right" means."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from labeler.model.captioner import ShowTellCaptioner
from labeler.model.checkpoint import load_checkpoint, save_checkpoint
from labeler.model.drafts import DecodeSettings
from labeler.training.calibrator import (
    CIDER_CRITERION,
    SCENES_CRITERION,
    fit_on_validation,
    sentence_cider,
    signals_of,
)
from labeler.training.features import compute_features
from labeler.training.readers import read_captions
from labeler.training.scenes import generate_scenes, mentioned_objects
from labeler.training.train import TrainSettings, train

TINY = TrainSettings(
    image_size=32, embed_size=16, hidden_size=16, dropout=0.1, min_word_count=1, epochs=2,
    batch_size=8, lr=1e-2, warmup_epochs=0.0, patience=0, workers=0, samples=0, threads=1,
    n_best=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    made = generate_scenes(folder / "scenes", count=70, seed=5, size=48,
                           splits={"train": 0.5, "val": 0.5})  # fmt: skip
    data = read_captions(made.json_path)
    result = train(data, folder / "model.pt", settings=TINY, cache_dir=folder / "cache")
    return result, data, folder


def test_the_checkpoint_carries_its_decoding_defaults(trained):
    result, data, folder = trained
    longest = max(len(c.split()) for it in data.items if it.split == "train" for c in it.captions)
    loaded = load_checkpoint(folder / "model.pt")
    assert loaded.decoding == DecodeSettings(beam_size=3, max_len=longest + 1, n_best=2).to_dict()
    assert result.decoding == DecodeSettings(**loaded.decoding)
    assert ShowTellCaptioner(loaded, device="cpu").decoding == result.decoding
    assert loaded.content_hash == result.content_hash  # the final write is the one recorded


def test_too_few_right_drafts_leave_no_calibrator_and_say_why(trained):
    result, _, folder = trained
    loaded = load_checkpoint(folder / "model.pt")
    calibration = loaded.training["calibration"]
    assert calibration["criterion"] == SCENES_CRITERION and calibration["drafts"] == 35
    assert calibration["right"] < 5  # a two-epoch model rarely names every object right
    assert "too few judged drafts" in calibration["reason"]
    assert loaded.calibrator is None and calibration["auroc"] is None
    assert ShowTellCaptioner(loaded, device="cpu").calibrator is None
    assert result.calibration.drafts == 35


def test_a_fitted_calibrator_travels_in_the_checkpoint(trained, tmp_path):
    """Judged against a truth made to agree with half of the drafts, the fit succeeds, the
    checkpoint keeps it, and the loaded captioner scores drafts with the same calibrator."""
    _, data, folder = trained
    loaded = load_checkpoint(folder / "model.pt")
    captioner = ShowTellCaptioner(loaded, device="cpu")
    val = [i for i, it in enumerate(data.items) if it.split == "val"]
    paths = [it.image_path for it in data.items]
    features = compute_features(loaded.model, paths, cache_dir=folder / "cache").features
    settings = captioner.decoding
    references, extras = [it.captions for it in data.items], [it.extra for it in data.items]
    first = fit_on_validation(captioner, lambda chunk: features[chunk], val, settings=settings,
                              references=references, extras=extras)  # fmt: skip
    made_up = [dict(it.extra) for it in data.items]
    wrong = [{"colour": "red", "shape": "circle"}, {"colour": "red", "shape": "circle"}]
    for k, i in enumerate(val):
        named = [{"colour": c, "shape": s} for c, s in mentioned_objects(first.texts[k])]
        made_up[i]["objects"] = named if k % 2 == 0 else wrong
    fitted = fit_on_validation(captioner, lambda chunk: features[chunk], val,
                               references=references, extras=made_up,
                               settings=settings, batch_size=7)  # fmt: skip
    assert fitted.texts == first.texts  # batching does not change the drafts
    assert fitted.right == (len(val) + 1) // 2 and fitted.calibrator is not None
    assert fitted.calibrator.examples == len(val) and fitted.calibrator.source == "validation"
    assert fitted.calibrator.settings_key == settings.key()
    calibrator = fitted.calibrator.to_dict()
    save_checkpoint(tmp_path / "m.pt", loaded.model, loaded.vocab, training=loaded.training,
                    decoding=settings.to_dict(), calibrator=calibrator)  # fmt: skip
    again = ShowTellCaptioner.from_checkpoint(tmp_path / "m.pt", device="cpu")
    drafts = again.caption_features(features[val[:4]], settings)
    rows = [signals_of(d) for d in drafts]
    assert np.array_equal(again.calibrator.predict(rows), fitted.calibrator.predict(rows))


def test_caption_features_equal_captioning_the_pixels(trained):
    _, data, folder = trained
    loaded = load_checkpoint(folder / "model.pt")
    captioner = ShowTellCaptioner(loaded, device="cpu")
    from PIL import Image

    images = [Image.open(it.image_path).convert("RGB") for it in data.items[:3]]
    pixels = torch.stack([captioner.preprocess(im) for im in images])
    features = loaded.model.features(loaded.preprocessing.normalize(pixels))
    settings = dataclasses.replace(captioner.decoding, n_best=1)
    by_pixels = captioner.caption(pixels, settings)
    by_features = captioner.caption_features(features, settings)
    assert [d.best.text for d in by_pixels] == [d.best.text for d in by_features]
    for a, b in zip(by_pixels, by_features, strict=True):
        assert a.best.log_likelihood == pytest.approx(b.best.log_likelihood, abs=1e-4)


def test_sentence_cider_judges_real_captions():
    refs = [["a dog runs on the grass", "a brown dog running in a field", "a dog on grass"],
            ["two people ride bikes down a street", "cyclists on a city road",
             "two men riding bicycles"]]  # fmt: skip
    good = sentence_cider(["a dog runs on the grass", "two men riding bicycles"], refs)
    bad = sentence_cider(["two men riding bicycles", "a dog runs on the grass"], refs)
    assert min(good) >= 1.0 > max(bad)
    assert CIDER_CRITERION.startswith("sentence CIDEr-D >= 1.0")
    assert sentence_cider([], []) == []
