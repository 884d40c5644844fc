"""The caption job with the model in separate processes (labeler/caption/engines.py): the same
drafts as the model in this process, failures recorded, a model file replaced mid-way refused,
Ctrl-C finishing what the processes started, and the choice between the engines."""

from __future__ import annotations

import os

import imagefactory as make
import pytest
import torch
from captionkit import scanned_photos, tiny_checkpoint
from sqlalchemy import func, select

from labeler.caption import engines
from labeler.caption.job import caption_images
from labeler.errors import InputError, ModelError
from labeler.model.captioner import ShowTellCaptioner, ShowTellFile
from labeler.model.drafts import DecodeSettings
from labeler.store.models import Caption, CaptionClaim, CaptionRun, Image, Model

SETTINGS = DecodeSettings(beam_size=3, max_len=8, n_best=2)
IMAGES = 9


@pytest.fixture
def model(tmp_path):
    return tiny_checkpoint(tmp_path / "tiny.pt")


@pytest.fixture
def captioner(model):
    return ShowTellCaptioner.from_checkpoint(model, device="cpu")


@pytest.fixture
def photos(store, tmp_path):
    return scanned_photos(store, tmp_path / "photos", IMAGES)


def _run(store, captioner, **options):
    options = {"settings": SETTINGS, "batch_size": 3, **options}
    return caption_images(store, captioner, **options)


def _drafts(store) -> dict[tuple[int, int], tuple[str, float]]:
    with store.session() as session:
        rows = session.scalars(select(Caption).where(~Caption.stale)).all()
    return {(d.image_id, d.rank): (d.text, d.log_likelihood) for d in rows}


def _count(store, what) -> int:
    with store.session() as session:
        return session.scalar(select(func.count()).select_from(what))


def test_model_processes_give_the_drafts_of_the_model_here(store, photos, captioner):
    here = _run(store, captioner, procs=0, workers=0, batch_size=1)
    assert here.timings["engine"] == "local" and here.images == IMAGES
    one_at_a_time = _drafts(store)
    result = _run(store, captioner, procs=2, recaption=True)
    assert result.images == IMAGES and not result.failed
    assert (result.timings["engine"], result.timings["procs"]) == ("processes", 2)
    assert result.timings["threads_each"] >= 1 and result.timings["start_s"] > 0
    assert 1 <= len(result.timings["procs_peak_rss_mib"]) <= 2
    assert all(peak > 50 for peak in result.timings["procs_peak_rss_mib"])  # torch and a model
    in_processes = _drafts(store)
    assert in_processes.keys() == one_at_a_time.keys() and len(in_processes) == 2 * IMAGES
    for key, (text, ll) in one_at_a_time.items():
        assert in_processes[key][0] == text
        assert in_processes[key][1] == pytest.approx(ll, abs=1e-4)
    assert _count(store, CaptionClaim) == 0


def test_files_broken_since_the_scan_fail_in_the_model_processes_and_the_run_goes_on(
    store, photos, captioner
):
    (photos / "img_000001.jpg").unlink()
    make.truncated_jpeg(photos, "img_000002.jpg")
    result = _run(store, captioner, procs=2)
    assert result.images == IMAGES - 2
    assert sum(result.failed.values()) == 2
    with store.session() as session:
        statuses = dict(session.execute(select(Image.path, Image.status)).all())
    assert statuses["img_000001.jpg"] == "missing" and statuses["img_000002.jpg"] == "unreadable"


def test_a_model_file_replaced_after_loading_fails_the_run_before_any_draft(
    store, photos, captioner, model
):
    tiny_checkpoint(model, seed=1)  # another model under the same name
    with pytest.raises(ModelError, match="changed while the run was captioning"):
        _run(store, captioner, procs=2)
    assert _count(store, Caption) == 0 and _count(store, CaptionClaim) == 0
    with store.session() as session:
        run = session.scalars(select(CaptionRun)).one()
    assert run.status == "failed" and "changed while the run" in run.error


def test_an_interrupt_commits_what_the_processes_started_and_the_next_run_finishes(
    store, photos, captioner
):
    asked = []

    def stop_after_first_batch() -> bool:
        asked.append(1)
        return len(asked) > 1

    first = _run(store, captioner, procs=2, batch_size=8, should_stop=stop_after_first_batch)
    # in hand when asked to stop: batches of 1, 2 and 2 (the ramp, then the shrinking tail);
    # each is either captioned and committed or given back, none left between
    assert first.interrupted and first.images >= 1
    assert first.images + first.given_back == 5
    assert len([k for k in _drafts(store) if k[1] == 0]) == first.images  # all committed
    assert _count(store, CaptionClaim) == 0
    rest = _run(store, captioner, procs=2)
    assert rest.images == IMAGES - first.images and not rest.interrupted
    with store.session() as session:
        per_image = session.execute(
            select(Caption.image_id, func.count())
            .where(Caption.rank == 0)
            .group_by(Caption.image_id)
        ).all()
    assert len(per_image) == IMAGES and {n for _, n in per_image} == {1}


def test_after_stop_a_batch_no_process_has_begun_comes_back_skipped(captioner, tmp_path):
    tasks = [[os.fsencode(path) for path in make.write_many(tmp_path, 1, size=(48, 40))]]
    with engines.ProcessEngine(captioner, SETTINGS, procs=1) as engine:
        assert engine.submit(tasks).result().drafts[0] is not None
        engine.stop()
        skipped = engine.submit(tasks)
        assert skipped.result().skipped and not skipped.result().drafts


def test_an_error_stops_the_model_processes_at_once(captioner, tmp_path):
    tasks = [[os.fsencode(path) for path in make.write_many(tmp_path, 1, size=(48, 40))]]
    engine = engines.ProcessEngine(captioner, SETTINGS, procs=2)
    with pytest.raises(RuntimeError, match="boom"), engine:
        processes = list(engine._pool._processes.values())  # type: ignore[union-attr]
        for _ in range(6):
            engine.submit(tasks * 8)  # work they would otherwise finish first
        raise RuntimeError("boom")
    assert len(processes) == 2 and not any(p.is_alive() for p in processes)


class _Wrapped(ShowTellCaptioner):
    """A captioner of another family, as a plug-in would bring: another process cannot load it."""


def test_the_engine_follows_procs_the_cores_and_the_captioner(captioner, model):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        auto = engines.engine_for(captioner, SETTINGS, procs=None, workers=0, pending=500)
        assert isinstance(auto, engines.ProcessEngine) and auto.procs == 2
        assert auto.describe["threads_each"] == 1
        few = engines.engine_for(captioner, SETTINGS, procs=None, workers=0, pending=499)
        assert isinstance(few, engines.LocalEngine)  # would not earn back the start-up
        asked = engines.engine_for(captioner, SETTINGS, procs=2, workers=0, pending=10)
        assert isinstance(asked, engines.ProcessEngine)
        torch.set_num_threads(1)
        one_core = engines.engine_for(captioner, SETTINGS, procs=None, workers=0)
        assert isinstance(one_core, engines.LocalEngine)
        explicit = engines.engine_for(captioner, SETTINGS, procs=3, workers=0)
        assert isinstance(explicit, engines.ProcessEngine) and explicit.depth == 4
    finally:
        torch.set_num_threads(threads)
    assert isinstance(engines.engine_for(captioner, SETTINGS, procs=0, workers=0),
                      engines.LocalEngine)  # fmt: skip
    plug_in = _Wrapped.from_checkpoint(model, device="cpu")
    assert isinstance(engines.engine_for(plug_in, SETTINGS, procs=None, workers=0),
                      engines.LocalEngine)  # fmt: skip
    with pytest.raises(InputError, match="on a CPU only"):
        engines.check_procs(plug_in, 2)
    with pytest.raises(InputError, match="0 or more"):
        engines.check_procs(captioner, -1)


def test_procs_are_checked_once_before_the_run_begins(store, photos, model, monkeypatch):
    calls = []
    check = engines.check_procs
    monkeypatch.setattr(engines, "check_procs", lambda *args: calls.append(args) or check(*args))
    _run(store, engines.open_model(model, device="cpu", procs=0), procs=0, workers=0)
    assert len(calls) == 1
    with pytest.raises(InputError, match="0 or more"):
        _run(store, engines.open_model(model, device="cpu", procs=-1), procs=-1)
    assert _count(store, CaptionRun) == 1  # the refused one never began


def test_the_model_is_built_here_only_where_it_runs_here(model, monkeypatch):
    built = ShowTellCaptioner.from_checkpoint(model, device="cpu")
    here = engines.open_model(model, device="cpu", procs=0)
    assert isinstance(here, ShowTellCaptioner)
    elsewhere = engines.open_model(model, device="cpu", procs=2)
    assert isinstance(elsewhere, ShowTellFile) and engines.portable(elsewhere)
    for member in ("identity", "name", "source", "preprocessing", "input_size", "decoding",
                   "calibrator", "device", "channels_last"):  # fmt: skip
        assert getattr(elsewhere, member) == getattr(built, member), member
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert isinstance(engines.open_model(model, device="cpu"), ShowTellFile)  # auto decides later
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert isinstance(engines.open_model(model, device="cpu"), ShowTellCaptioner)  # one core


def test_with_model_processes_this_process_never_builds_the_model(store, photos, model,
                                                                 monkeypatch):  # fmt: skip
    read = engines.open_model(model, device="cpu", procs=2)

    def never(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the model was built in the parent")

    monkeypatch.setattr(ShowTellCaptioner, "__init__", never)  # the model processes' is theirs
    result = _run(store, read, procs=2)
    assert result.images == IMAGES and result.timings["engine"] == "processes"
    with store.session() as session:
        assert session.scalar(select(Model.source)) == str(model.resolve())  # recorded once


def test_a_run_too_small_for_processes_builds_the_model_here_as_it_starts(
    store, photos, model, captioner, monkeypatch
):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    read = engines.open_model(model, device="cpu")
    assert isinstance(read, ShowTellFile)
    result = _run(store, read, workers=0)  # 9 images: auto picks the model here
    assert result.timings["engine"] == "local" and result.timings["start_s"] > 0
    from_file = _drafts(store)
    _run(store, captioner, procs=0, workers=0, recaption=True)
    assert _drafts(store) == from_file


def test_a_model_file_replaced_after_reading_fails_the_run_where_it_is_built(store, photos, model):
    read = engines.open_model(model, device="cpu", procs=2)
    tiny_checkpoint(model, seed=1)
    with pytest.raises(ModelError, match="changed while the run was captioning"):
        _run(store, read, procs=0, workers=0)
    with store.session() as session:
        run = session.scalars(select(CaptionRun)).one()
    assert run.status == "failed" and _count(store, Caption) == 0
