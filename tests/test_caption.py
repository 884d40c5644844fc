"""The caption job through the library: drafts stored with every field, resumable, once per
content, failures recorded per image, batch size not changing any draft, and every draft scored
by the calibrator current when it is written."""

from __future__ import annotations

import os

import imagefactory as make
import pytest
from captionkit import CALIBRATOR, tiny_checkpoint
from sqlalchemy import func, select

from labeler.calibration import Calibrator, draft_signals
from labeler.caption.job import caption_images
from labeler.errors import InputError
from labeler.files.scan import scan
from labeler.model.captioner import ShowTellCaptioner
from labeler.model.drafts import DecodeSettings
from labeler.store import calibrators as calibrator_store
from labeler.store import captions as caption_store
from labeler.store.models import Caption, CaptionClaim, CaptionRun, Image, StoredCalibrator

SETTINGS = DecodeSettings(beam_size=3, max_len=8, n_best=2)


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    path = tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")
    return ShowTellCaptioner.from_checkpoint(path, device="cpu")


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    make.write_many(folder, 7, size=(48, 40), fmt="JPEG")
    make.palette_png_transparent(folder)
    make.text_as_jpg(folder)  # unsupported: never captioned
    return folder


def _run(store, captioner, **options):
    options = {"settings": SETTINGS, "workers": 0, "procs": 0, "batch_size": 3, **options}
    return caption_images(store, captioner, **options)


def _drafts(store, rank=None):
    with store.session() as session:
        query = select(Caption).order_by(Caption.image_id, Caption.rank)
        if rank is not None:
            query = query.where(Caption.rank == rank)
        return session.scalars(query).all()


def test_every_readable_image_gets_n_best_drafts_with_every_field(store, photos, captioner):
    scan(store, [photos], workers=1)
    result = _run(store, captioner)
    assert (result.images, result.contents, sum(result.failed.values())) == (8, 8, 0)
    drafts = _drafts(store)
    assert len(drafts) == 16 and {d.rank for d in drafts} == {0, 1}
    for d in drafts:
        assert d.text and d.num_tokens == len(d.token_logprobs) >= 1
        assert d.log_likelihood == pytest.approx(sum(d.token_logprobs))
        assert d.confidence == pytest.approx(2.718281828459045 ** (d.log_likelihood / d.num_tokens))
        assert 0 < d.confidence <= 1 and d.margin is not None and d.margin >= 0
        assert d.settings_key == SETTINGS.key() and not d.stale
    best = {d.image_id: d for d in drafts if d.rank == 0}
    second = {d.image_id: d for d in drafts if d.rank == 1}
    assert all(best[i].score >= second[i].score and best[i].text != second[i].text for i in best)
    with store.session() as session:
        run = session.scalar(select(CaptionRun))
        assert run.status == "completed" and run.counts["images"] == 8
        assert run.settings == SETTINGS.to_dict() and run.finished_at is not None
        assert session.scalar(select(func.count()).select_from(CaptionClaim)) == 0


def test_a_second_run_has_nothing_to_do_and_recaption_redoes_everything(store, photos, captioner):
    scan(store, [photos], workers=1)
    _run(store, captioner)
    first = {d.id for d in _drafts(store)}
    assert _run(store, captioner).images == 0
    assert {d.id for d in _drafts(store)} == first
    again = _run(store, captioner, recaption=True)
    assert again.images == 8 and len(_drafts(store)) == 16
    assert not first & {d.id for d in _drafts(store)}


def test_other_settings_are_other_drafts(store, photos, captioner):
    scan(store, [photos], workers=1)
    _run(store, captioner)
    greedy = DecodeSettings(beam_size=1, max_len=8)
    assert _run(store, captioner, settings=greedy).images == 8
    with store.session() as session:
        keys = session.execute(
            select(Caption.settings_key, func.count()).group_by(Caption.settings_key)
        ).all()
    assert dict(keys) == {SETTINGS.key(): 16, greedy.key(): 8}


def test_identical_content_is_captioned_once_and_shares_the_drafts(store, tmp_path, captioner):
    folder = tmp_path / "photos"
    (original,) = make.write_many(folder, 1, size=(48, 40))
    (folder / "copy.jpg").write_bytes(original.read_bytes())
    scan(store, [folder], workers=1)
    result = _run(store, captioner)
    assert (result.images, result.contents) == (2, 1)
    a, b = (sorted((d.text, d.log_likelihood) for d in _drafts(store) if d.image_id == i)
            for i in (1, 2))  # fmt: skip
    assert a == b
    make.write_many(folder / "later", 1, size=(48, 40), start=5)
    (folder / "later" / "copy2.jpg").write_bytes(original.read_bytes())
    scan(store, [folder], workers=1)
    later = _run(store, captioner)
    assert (later.images, later.contents, later.copied) == (1, 1, 1)


def test_stale_drafts_are_redone(store, photos, captioner):
    scan(store, [photos], workers=1)
    _run(store, captioner)
    target = photos / "img_000000.jpg"
    make.plain_image(photos, target.name, size=(48, 40), color=make.BLUE, fmt="JPEG")
    os.utime(target, (os.path.getmtime(target) + 10,) * 2)
    assert scan(store, [photos], workers=1).stale_drafts == 2
    result = _run(store, captioner)
    assert result.images == 1
    assert not any(d.stale for d in _drafts(store))


def test_a_file_that_broke_since_the_scan_is_recorded_and_the_run_goes_on(store, photos, captioner):
    scan(store, [photos], workers=1)
    (photos / "img_000001.jpg").unlink()
    make.truncated_jpeg(photos, "img_000002.jpg")
    result = _run(store, captioner)
    assert result.images == 6 and sum(result.failed.values()) == 2
    with store.session() as session:
        broken = {
            row.path: (row.status, row.reason)
            for row in session.scalars(select(Image).where(Image.path.like("img_00000_.jpg")))
            if row.status != "ok"
        }
    assert broken["img_000001.jpg"][0] == "missing" and broken["img_000002.jpg"][0] == "unreadable"
    assert all(reason.startswith("caption: ") for _, reason in broken.values())


def test_an_interrupted_run_keeps_its_batches_and_the_next_finishes(store, photos, captioner):
    scan(store, [photos], workers=1)
    calls = []

    def stop_after_first_batch() -> bool:
        calls.append(1)
        return len(calls) > 1

    first = _run(store, captioner, should_stop=stop_after_first_batch, batch_size=8)
    assert first.interrupted and first.images == 1  # the first batch is an eighth: ramping up
    assert len(_drafts(store, rank=0)) == 1
    rest = _run(store, captioner)
    assert rest.images == 7 and not rest.interrupted
    assert len(_drafts(store, rank=0)) == 8
    with store.session() as session:
        statuses = session.scalars(select(CaptionRun.status).order_by(CaptionRun.id)).all()
    assert statuses == ["interrupted", "completed"]


def test_the_limit_stops_early(store, photos, captioner):
    scan(store, [photos], workers=1)
    assert _run(store, captioner, limit=4, batch_size=2).images == 4
    assert _run(store, captioner, limit=1, batch_size=3).images == 1  # smaller than a batch
    with pytest.raises(InputError, match="limit"):
        _run(store, captioner, limit=0)


def test_batch_size_and_loader_processes_do_not_change_any_draft(store, photos, captioner):
    scan(store, [photos], workers=1)
    _run(store, captioner, batch_size=1)
    one_at_a_time = {(d.image_id, d.rank): (d.text, d.log_likelihood) for d in _drafts(store)}
    _run(store, captioner, batch_size=8, workers=2, recaption=True)
    batched = {(d.image_id, d.rank): (d.text, d.log_likelihood) for d in _drafts(store)}
    assert batched.keys() == one_at_a_time.keys()
    for key, (text, ll) in one_at_a_time.items():
        assert batched[key][0] == text
        assert batched[key][1] == pytest.approx(ll, abs=1e-4)


def test_an_unknown_dataset_is_refused(store, photos, captioner):
    scan(store, [photos], workers=1)
    with pytest.raises(InputError, match="no dataset named elsewhere"):
        _run(store, captioner, datasets=["elsewhere"])


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_the_loaders_pillow_preprocessing_equals_torchvisions(interpolation):
    import numpy as np
    from PIL import Image as PILImage

    from labeler.model.preprocessing import Preprocessing

    prep = Preprocessing(resize=40, crop=32, mean=(0.5,) * 3, std=(0.2,) * 3,
                         interpolation=interpolation)  # fmt: skip
    rng = np.random.default_rng(0)
    for size in [(48, 40), (40, 48), (100, 37), (40, 40), (333, 500), (41, 1000)]:
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        image = PILImage.fromarray(pixels)
        assert np.array_equal(prep.to_array(image), prep.to_tensor(image).numpy()), size


def test_loader_workers_decode_without_importing_torch(tmp_path):
    import subprocess
    import sys

    (path,) = make.write_many(tmp_path, 1, size=(64, 48))
    code = (
        "import sys\n"
        "from labeler.caption.loader import decode_first\n"
        "from labeler.model.preprocessing import Preprocessing\n"
        "prep = Preprocessing(resize=40, crop=32, mean=(0.5,) * 3, std=(0.2,) * 3)\n"
        f"decoded = decode_first([{str(path)!r}.encode()], prep.to_array, 40, 10**8)\n"
        "assert decoded.pixels.shape == (3, 32, 32), decoded\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_batches_ramp_up_so_the_model_starts_early(store, tmp_path, captioner, monkeypatch):
    make.write_many(tmp_path / "many", 20, size=(48, 40))
    scan(store, [tmp_path / "many"], workers=1)
    sizes = []
    original = captioner.caption

    def counting(images, settings):
        sizes.append(images.size(0))
        return original(images, settings)

    monkeypatch.setattr(captioner, "caption", counting)
    assert _run(store, captioner, batch_size=8).images == 20
    assert sizes == [1, 2, 4, 8, 5]


# p_accept ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """The tiny model with a calibrator in its checkpoint, as training leaves one."""
    folder = tmp_path_factory.mktemp("model")
    path = tiny_checkpoint(folder / "calibrated.pt", calibrator=CALIBRATOR)
    return ShowTellCaptioner.from_checkpoint(path, device="cpu")


def _predicted(calibrator: Calibrator, draft: Caption) -> float:
    """The calibrator's p_accept for a draft, from the fields stored with it."""
    return calibrator.predict_one(draft_signals(
        draft.log_likelihood, draft.num_tokens, draft.token_logprobs, draft.margin,
        draft.finished, draft.repeated_ngram, draft.has_unknown,
    ))  # fmt: skip


def _calibrators(store) -> list[StoredCalibrator]:
    with store.session() as session:
        return session.scalars(select(StoredCalibrator).order_by(StoredCalibrator.id)).all()


def test_without_a_calibrator_confidence_stands_in(store, photos, captioner):
    scan(store, [photos], workers=1)
    result = _run(store, captioner)
    drafts = _drafts(store)
    assert all(d.p_accept == d.confidence and d.calibrator_id is None for d in drafts)
    assert result.counts()["mean_p_accept"] == pytest.approx(result.mean_confidence)
    assert _calibrators(store) == []


def test_every_draft_is_scored_by_the_checkpoints_calibrator(store, tmp_path, calibrated):
    folder = tmp_path / "photos"
    first, *_ = make.write_many(folder, 5, size=(48, 40))
    (folder / "copy.jpg").write_bytes(first.read_bytes())
    scan(store, [folder], workers=1)
    result = _run(store, calibrated)
    assert (result.images, result.contents) == (6, 5)
    (stored,) = _calibrators(store)
    assert (stored.version, stored.source, stored.settings_key) == (1, "validation", None)
    assert stored.params == CALIBRATOR.to_dict() and stored.examples == 200
    drafts = _drafts(store)
    assert len(drafts) == 12 and {d.calibrator_id for d in drafts} == {stored.id}
    for d in drafts:  # best drafts and alternatives, the copy's too
        assert d.p_accept == pytest.approx(_predicted(CALIBRATOR, d), abs=1e-12)
        assert 0 < d.p_accept < 1 and d.p_accept != d.confidence
    best = [d.p_accept for d in drafts if d.rank == 0]
    assert result.counts()["mean_p_accept"] == pytest.approx(sum(best) / len(best))
    with store.session() as session:
        assert session.scalar(select(CaptionRun.counts))["mean_p_accept"] == pytest.approx(
            result.mean_p_accept
        )
    # the model is registered again by every run: its calibrator is kept once
    _run(store, calibrated, settings=DecodeSettings(beam_size=1, max_len=8))
    assert len(_calibrators(store)) == 1
    assert {d.calibrator_id for d in _drafts(store)} == {stored.id}


def test_a_calibrator_fitted_for_the_settings_beats_the_checkpoints(store, tmp_path, calibrated):
    folder = tmp_path / "photos"
    first, *_ = make.write_many(folder, 3, size=(48, 40))
    scan(store, [folder], workers=1)
    mine = Calibrator(**{**vars(CALIBRATOR), "bias": 1.5, "source": "reviews",
                         "settings_key": SETTINGS.key()})  # fmt: skip
    theirs = Calibrator(**{**vars(CALIBRATOR), "bias": -2.0, "source": "reviews",
                           "settings_key": "other"})  # fmt: skip
    with store.write() as session:
        model_id = caption_store.register_model(
            session, content_hash=calibrated.identity, name=calibrated.name, family="show-tell",
            source=None, info=None, calibrator=calibrated.calibrator,
        )  # fmt: skip
        chosen = calibrator_store.add(session, model_id=model_id, calibrator=mine)
        calibrator_store.add(session, model_id=model_id, calibrator=theirs)  # newer, elsewhere
        chosen_id = chosen.id
    _run(store, calibrated)
    drafts = _drafts(store)
    assert {d.calibrator_id for d in drafts} == {chosen_id}
    assert all(d.p_accept == pytest.approx(_predicted(mine, d), abs=1e-12) for d in drafts)
    # a refit after the run: an identical image captioned later gets the copies, scored anew
    newer = Calibrator(**{**vars(mine), "bias": -0.5})
    with store.write() as session:
        newest_id = calibrator_store.add(session, model_id=model_id, calibrator=newer).id
    (folder / "later").mkdir()
    (folder / "later" / "copy.jpg").write_bytes(first.read_bytes())
    scan(store, [folder], workers=1)
    assert _run(store, calibrated).copied == 1
    with store.session() as session:
        copy_id = session.scalar(select(Image.id).where(Image.path == "later/copy.jpg"))
    copies = [d for d in _drafts(store) if d.image_id == copy_id]
    assert len(copies) == 2 and {d.calibrator_id for d in copies} == {newest_id}
    assert all(d.p_accept == pytest.approx(_predicted(newer, d), abs=1e-12) for d in copies)


def test_a_run_whose_drafts_all_hit_the_maximum_length_warns(store, photos, captioner, tmp_path):
    import torch
    from typer.testing import CliRunner

    from labeler.cli import app
    from labeler.model.checkpoint import load_checkpoint, save_checkpoint

    scan(store, [photos], workers=1)
    model = str(captioner.source)
    base = ["caption", "--model", model, "--db", store.url, "--procs", "0", "--workers", "0"]
    cut = CliRunner().invoke(app, [*base, "--max-len", "1", "--json"])
    assert cut.exit_code == 0, cut.output
    assert "Warning: every draft used all 1 decoding steps without ending" in cut.output
    assert '"unfinished": 8' in cut.output
    # The same model made to end its drafts: no warning.
    loaded = load_checkpoint(model)
    with torch.no_grad():
        loaded.model.decoder.out.bias[loaded.vocab.end_id] = 50.0
    ending = tmp_path / "ending.pt"
    save_checkpoint(ending, loaded.model, loaded.vocab, training={})
    whole = CliRunner().invoke(app, [*base[:2], str(ending), *base[3:], "--max-len", "4"])
    assert whole.exit_code == 0, whole.output
    assert "Warning" not in whole.output
