"""`labeler caption --engine ray` (labeler/caption/ray_engine.py) on a local Ray of two CPUs, one
per module: the drafts of the local engine, failures recorded, an actor killed mid-run restarted,
Ctrl-C and a killed driver resumed without duplicates, a node that cannot see the images failing
the run at once, and the one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import imagefactory as make
import psutil
import pytest
import ray
from captionkit import scanned_photos, tiny_checkpoint
from sqlalchemy import func, select
from typer.testing import CliRunner

from labeler.caption import ray_engine
from labeler.caption.job import caption_images
from labeler.caption.ray_engine import INSTALL, RayOptions
from labeler.cli import app
from labeler.errors import InputError
from labeler.files.scan import scan
from labeler.model.captioner import ShowTellCaptioner, ShowTellFile
from labeler.model.drafts import DecodeSettings
from labeler.store import open_store
from labeler.store.models import Caption, CaptionClaim, CaptionRun, Image

SETTINGS = DecodeSettings(beam_size=3, max_len=8, n_best=2)
IMAGES = 9


def _ray_processes() -> set[int]:
    found = set()
    for p in psutil.process_iter(["name"]):
        if p.info["name"] in ("raylet", "gcs_server"):
            found.add(p.pid)
    return found


@pytest.fixture(scope="module")
def cluster():
    """One local Ray for the module (starting one costs seconds); gone, raylet and all, after."""
    before = _ray_processes()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_MODE", "disabled")  # no token written to the user's home
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)  # fmt: skip
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ours = _ray_processes() - before
            ray.shutdown()
    assert not ours & _ray_processes(), "a raylet or gcs_server outlived ray.shutdown()"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture
def photos(store, tmp_path):
    return scanned_photos(store, tmp_path / "photos", IMAGES)


def _run(store, model, **options):
    options = {"settings": SETTINGS, "batch_size": 3, **options}
    return caption_images(store, ShowTellFile.read(model, device="cpu"), **options)


def _drafts(store) -> dict[tuple[str, int], tuple[str, float]]:
    with store.session() as session:
        rows = session.execute(
            select(Image.path, Caption.rank, Caption.text, Caption.log_likelihood)
            .join(Image, Image.id == Caption.image_id)
            .where(~Caption.stale)
        ).all()
    return {(path, rank): (text, ll) for path, rank, text, ll in rows}


def _same(found, expected) -> None:
    assert found.keys() == expected.keys()
    for key, (text, ll) in expected.items():
        assert found[key][0] == text
        assert found[key][1] == pytest.approx(ll, abs=1e-4)


def _count(store, what) -> int:
    with store.session() as session:
        return session.scalar(select(func.count()).select_from(what))


def _one_set_each(store, images: int = IMAGES) -> None:
    """Every image has exactly one set of drafts (n-best of them), none twice."""
    with store.session() as session:
        per_image = session.execute(
            select(Caption.image_id, func.count()).group_by(Caption.image_id)
        ).all()
    assert len(per_image) == images and {n for _, n in per_image} == {SETTINGS.n_best}


def test_ray_writes_the_drafts_of_the_local_engine(cluster, store, photos, model):
    captioner = ShowTellCaptioner.from_checkpoint(model, device="cpu")
    here = caption_images(store, captioner, settings=SETTINGS, procs=0, workers=0, batch_size=1)
    assert here.images == IMAGES
    local = _drafts(store)
    result = _run(store, model, ray=RayOptions(), recaption=True)
    assert result.images == IMAGES and not result.failed and not result.interrupted
    timings = result.timings
    assert (timings["engine"], timings["actors"], timings["device"]) == ("ray", 2, "cpu")
    assert timings["cpus_each"] == 1 and timings["nodes"] == 1 and timings["start_s"] > 0
    assert timings["model_s"] > 0 and timings["decode_s"] > 0 and "store_s" in timings
    _same(_drafts(store), local)
    assert len(local) == 2 * IMAGES and _count(store, CaptionClaim) == 0


def test_files_broken_since_the_scan_are_recorded_failures(cluster, store, photos, model):
    (photos / "img_000007.jpg").unlink()
    make.truncated_jpeg(photos, "img_000006.jpg")
    result = _run(store, model, ray=RayOptions(actors=1))
    assert result.images == IMAGES - 2 and sum(result.failed.values()) == 2
    with store.session() as session:
        statuses = dict(session.execute(select(Image.path, Image.status)).all())
    assert statuses["img_000007.jpg"] == "missing" and statuses["img_000006.jpg"] == "unreadable"


def test_a_node_that_cannot_open_the_first_image_fails_the_run_naming_it(
    cluster, store, photos, model, tmp_path
):
    photos.rename(tmp_path / "elsewhere")  # as if this node did not see the shared storage
    with pytest.raises(InputError, match=r"cannot open .*photos/img_000000\.jpg \(no such file\)"):
        _run(store, model, ray=RayOptions(actors=1))
    assert _count(store, Caption) == 0 and _count(store, CaptionClaim) == 0
    with store.session() as session:
        run = session.scalars(select(CaptionRun)).one()
    assert run.status == "failed" and "storage every node sees" in run.error


def _actor_pids() -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any("ray::_Actor" in part for part in p.info["cmdline"] or [])
    ]


def test_an_actor_killed_mid_run_is_restarted_and_the_run_finishes(cluster, store, photos, model):
    killed = []

    def kill_an_actor(progress) -> None:
        if not killed and progress.done:
            pids = _actor_pids()
            assert pids
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    result = _run(store, model, ray=RayOptions(actors=1), batch_size=2, progress=kill_an_actor)
    assert killed and result.images == IMAGES and not result.failed
    _one_set_each(store)
    after_the_loss = _drafts(store)
    captioner = ShowTellCaptioner.from_checkpoint(model, device="cpu")
    caption_images(store, captioner, settings=SETTINGS, procs=0, workers=0, recaption=True)
    _same(after_the_loss, _drafts(store))


def test_an_interrupt_commits_what_the_actors_started_and_the_next_run_finishes(
    cluster, store, photos, model
):
    asked = []

    def stop_after_first_batch() -> bool:
        asked.append(1)
        return len(asked) > 1

    first = _run(store, model, ray=RayOptions(), batch_size=8, should_stop=stop_after_first_batch)
    assert first.interrupted and first.images + first.given_back >= 1
    assert _count(store, CaptionClaim) == 0
    rest = _run(store, model, ray=RayOptions())
    assert first.images + rest.images == IMAGES and not rest.interrupted
    _one_set_each(store)


def test_a_killed_driver_loses_only_its_batches_in_flight_and_a_rerun_finishes(
    cluster, store_url, model, tmp_path
):
    folder = tmp_path / "many"
    make.write_many(folder, 40, size=(320, 240), fmt="JPEG")
    store = open_store(store_url)
    scan(store, [folder], workers=1)
    env = {**os.environ, "RAY_ADDRESS": cluster, "RAY_AUTH_MODE": "disabled"}
    command = [sys.executable, "-m", "labeler", "caption", "--db", store_url, "--model",
               str(model), "--beam", "3", "--max-len", "8", "--n-best", "2", "--engine", "ray",
               "--ray-actors", "1", "--batch-size", "1"]  # fmt: skip
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _count(store, Caption) == 0 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    _, err = driver.communicate()
    assert driver.returncode == -signal.SIGKILL, err.decode()
    killed_at = _count(store, Caption) // 2
    assert 0 < killed_at < 40  # killed mid-run, with drafts committed
    done = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["images"] == 40 - killed_at and summary["timings"]["engine"] == "ray"
    assert summary["timings"]["actors"] == 1
    _one_set_each(store, 40)
    killed_run = _drafts(store)
    caption_images(store, ShowTellCaptioner.from_checkpoint(model, device="cpu"),
                   settings=SETTINGS, procs=0, workers=0, recaption=True)  # fmt: skip
    _same(killed_run, _drafts(store))
    with store.session() as session:
        statuses = sorted(session.scalars(select(CaptionRun.status)))
    assert statuses == ["abandoned", "completed", "completed"]
    store.dispose()


def test_engine_ray_without_the_extra_is_one_line_and_exit_1(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    result = CliRunner().invoke(
        app, ["caption", "--model", str(tmp_path / "m.pt"), "--engine", "ray"]
    )
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {INSTALL}"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--ray-actors", "2"], "--ray-address and --ray-actors need --engine ray"),
        (["--engine", "spark"], "--engine must be local or ray"),
        (["--engine", "ray", "--procs", "2"], "--procs and --workers are the local engine's"),
        (["--engine", "ray", "--ray-address", "127.0.0.1:1"], "cannot reach the Ray cluster"),
    ],
)
def test_wrong_ray_options_are_one_line_and_exit_1(model, photos, store_url, options, message):
    result = CliRunner().invoke(app, ["caption", "--db", store_url, "--model", str(model),
                                      *options])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("options", "cpus", "gpus", "planned"),
    [
        (RayOptions(), 2, 0, ("cpu", 2, {"num_cpus": 1.0})),
        (RayOptions(actors=3), 2, 0, ("cpu", 3, {"num_cpus": 0.6666})),
        (RayOptions(actors=1), 8, 0, ("cpu", 1, {"num_cpus": 8.0})),
        (RayOptions(), 16, 2, ("cuda", 2, {"num_gpus": 1.0, "num_cpus": 1})),
        (
            RayOptions(actors=4, device="cuda:1"),
            16,
            2,
            ("cuda", 4, {"num_gpus": 0.5, "num_cpus": 1}),
        ),
        (RayOptions(device="cpu"), 16, 2, ("cpu", 16, {"num_cpus": 1.0})),
    ],
)
def test_the_actors_planned_from_the_cluster(options, cpus, gpus, planned):
    assert ray_engine._plan(options, cpus, gpus) == planned


def test_cuda_asked_of_a_cluster_without_gpus_is_an_error():
    with pytest.raises(InputError, match="the Ray cluster has no GPU"):
        ray_engine._plan(RayOptions(device="cuda"), 2, 0)


def test_the_summary_names_the_engine_its_actors_and_the_time_per_stage():
    from labeler.cli.caption import _ray_line

    timings = {"engine": "ray", "actors": 2, "nodes": 1, "device": "cpu", "address": "h:6379",
               "start_s": 5.04, "decode_s": 1.0, "model_s": 9.26, "wait_s": 4.5,
               "store_s": 0.3}  # fmt: skip
    assert _ray_line(timings) == (
        "Engine ray (h:6379): 2 actor(s) on 1 node(s), cpu; start 5.0 s, decode 1.0 s, "
        "model 9.3 s, waiting for the actors 4.5 s, store 0.3 s."
    )
