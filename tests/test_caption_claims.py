"""Who holds the caption job's claims: a killed worker's claims are freed at once and its run
marked `abandoned`; a pid that lives on in another process is not its holder; a live worker's
claims are waited for, and the wait says whom for and until when; Ctrl-C ends a wait at once; on
PostgreSQL a run's claims end with its database session; a live worker renews its claims."""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import imagefactory as make
import psutil
import pytest
from captionkit import tiny_checkpoint
from sqlalchemy import delete, func, insert, select

from labeler.caption import holders
from labeler.caption.job import caption_images
from labeler.files.scan import scan
from labeler.model.captioner import ShowTellCaptioner
from labeler.model.drafts import DecodeSettings
from labeler.store import captions as caption_store
from labeler.store import locks
from labeler.store.models import Caption, CaptionClaim, CaptionRun, Image, Model, utcnow

SETTINGS = DecodeSettings(beam_size=2, max_len=6, n_best=1)  # what _worker's options ask for
IMAGES = 6


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def captioner(model_path):
    return ShowTellCaptioner.from_checkpoint(model_path, device="cpu")


@pytest.fixture
def photos(store, tmp_path):
    make.write_many(tmp_path / "photos", IMAGES, size=(48, 40))
    scan(store, [tmp_path / "photos"], workers=1)


def _worker(store_url: str, model, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "labeler", "caption", "--model", str(model), "--db", store_url,
        "--beam", "2", "--max-len", "6", "--n-best", "1", "--batch-size", "1", "--workers", "0",
        "--procs", "0", "--device", "cpu", "--json", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


class _Lines:
    """A process's stderr, line by line, read by a thread so that a test can wait for a line."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(process.stderr,), daemon=True).start()

    def _read(self, stream) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            self.lines.put(line.decode(errors="replace"))

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} in {timeout} s; stderr: {''.join(self.seen)}")


def _count(store, what) -> int:
    with store.session() as session:
        return session.scalar(select(func.count()).select_from(what))


def _runs(store) -> list[CaptionRun]:
    with store.session() as session:
        return list(session.scalars(select(CaptionRun).order_by(CaptionRun.id)))


def _model_id(store, captioner) -> int:
    with store.write() as session:
        return caption_store.register_model(
            session, content_hash=captioner.identity, name=captioner.name, family="show-tell",
            source=None, info=None,
        )  # fmt: skip


def _hold(store, model_id, *, host, pid, started, expires_in=45.0, claim=True) -> tuple[int, str]:
    """Another worker's `running` run, holding the first image's content unless `claim` is
    false; returns the run's id and the content hash. The claim's lease is short enough that
    today's code, which cannot tell a dead holder, would end its wait within the test."""
    with store.write() as session:
        run_id = session.scalar(
            insert(CaptionRun)
            .values(model_id=model_id, settings_key=SETTINGS.key(), settings=SETTINGS.to_dict(),
                    status="running", host=host, pid=pid, process_started=started)
            .returning(CaptionRun.id)
        )  # fmt: skip
        content = session.scalar(select(Image.content_hash).order_by(Image.id).limit(1))
        if claim:
            now = utcnow()
            expires = now + dt.timedelta(seconds=expires_in)
            session.execute(
                insert(CaptionClaim).values(
                    model_id=model_id, settings_key=SETTINGS.key(), content_hash=content,
                    worker=f"{host}:{pid}:test", host=host, pid=pid, process_started=started,
                    run_id=run_id, claimed_at=now, expires_at=expires,
                )
            )  # fmt: skip
    return run_id, content


def _free(store, run_id: int) -> None:
    """The other worker lets its claims go (as when it finishes its batch)."""
    with store.write() as session:
        session.execute(delete(CaptionClaim).where(CaptionClaim.run_id == run_id))


def _every_image_once(store, images: int) -> None:
    with store.session() as session:
        per_image = session.execute(
            select(Caption.image_id, func.count()).group_by(Caption.image_id)
        ).all()
    assert len(per_image) == images and {n for _, n in per_image} == {1}


def _hold_the_last(store, captioner) -> None:
    """Claim the last image's content as a live holder that is no run (this test process): a
    worker can caption every other image but never finish, so it is still running whenever the
    test gets to kill it, however late that is. `_free_the_last` lets it go."""
    model_id, me, now = _model_id(store, captioner), holders.me(), utcnow()
    with store.write() as session:
        content = session.scalar(select(Image.content_hash).order_by(Image.id.desc()).limit(1))
        session.execute(
            insert(CaptionClaim).values(
                model_id=model_id, settings_key=SETTINGS.key(), content_hash=content,
                worker=f"{me.host}:{me.pid}:test", host=me.host, pid=me.pid,
                process_started=me.started, run_id=None, claimed_at=now,
                expires_at=now + dt.timedelta(hours=1),
            )
        )  # fmt: skip


def _free_the_last(store) -> None:
    with store.write() as session:
        session.execute(delete(CaptionClaim).where(CaptionClaim.run_id.is_(None)))


def test_a_worker_killed_with_sigkill_is_taken_over_at_once_and_its_run_abandoned(
    store, store_url, tmp_path, model_path, captioner
):
    images = 16
    make.write_many(tmp_path / "many", images, size=(48, 40))
    scan(store, [tmp_path / "many"], workers=1)
    _hold_the_last(store, captioner)
    victim = _worker(store_url, model_path)  # the default lease
    deadline = time.monotonic() + 120
    while _count(store, Caption) < 2:
        assert victim.poll() is None, victim.stderr.read().decode()
        assert time.monotonic() < deadline, "the first worker never committed a batch"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert 2 <= _count(store, Caption) < images  # never the last: this test holds it
    _free_the_last(store)
    # whatever the victim held when it died (usually a batch or two) is free at once: the rerun
    # never waits, although the victim's claims would last a minute
    rerun = _worker(store_url, model_path)
    try:
        out, err = rerun.communicate(timeout=120)
    finally:
        rerun.kill()
    assert rerun.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["waits"] == [] and "waited_s" not in result["timings"]
    assert "Waiting" not in err.decode()
    _every_image_once(store, images)
    assert _count(store, CaptionClaim) == 0
    dead, finished = _runs(store)
    assert (dead.status, finished.status) == ("abandoned", "completed")
    assert f"pid {victim.pid}" in dead.error and "ended" in dead.error
    assert dead.finished_at is not None


def test_a_pid_that_lives_on_in_another_process_is_not_the_holder(store, photos, captioner):
    model_id = _model_id(store, captioner)
    me = holders.me()
    # this process's pid, but a process that started an hour earlier: the holder is gone
    reused, _ = _hold(store, model_id, host=me.host, pid=me.pid, started=me.started - 3600)
    # a finished process's pid, without claims: its run is found dead at the start
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, check=True, text=True)  # fmt: skip
    gone = int(done.stdout)
    assert not psutil.pid_exists(gone)
    vanished, _ = _hold(store, model_id, host=me.host, pid=gone, started=time.time() - 5,
                        claim=False)  # fmt: skip
    session = locks.RunSession(store.engine)
    session.hold(reused)  # PostgreSQL: its session lives on, so only the start time tells
    try:
        result = caption_images(store, captioner, settings=SETTINGS, workers=0, procs=0,
                                batch_size=2)  # fmt: skip
    finally:
        session.close()
    runs = {run.id: run for run in _runs(store)}
    assert runs[reused].status == "abandoned" and f"pid {me.pid}" in runs[reused].error
    assert runs[vanished].status == "abandoned" and f"pid {gone}" in runs[vanished].error
    assert runs[result.run_id].status == "completed"
    assert result.waits == [] and result.images == IMAGES  # its claim was free at once
    _every_image_once(store, IMAGES)


def _live_holder(store, captioner):
    """A claim held by this very process (alive), with its session lock held on PostgreSQL."""
    model_id = _model_id(store, captioner)
    me = holders.me()
    run_id, _ = _hold(store, model_id, host=me.host, pid=me.pid, started=me.started,
                      expires_in=600)  # fmt: skip
    session = locks.RunSession(store.engine)
    session.hold(run_id)
    with store.session() as s:
        until = s.scalar(select(CaptionClaim.expires_at).where(CaptionClaim.run_id == run_id))
    until = until if until.tzinfo else until.replace(tzinfo=dt.timezone.utc)
    return run_id, session, until, f"run {run_id} ({me.host} pid {me.pid})"


def test_a_live_workers_claims_are_waited_for_and_the_wait_says_until_when(
    store, store_url, photos, captioner, model_path
):
    run_id, session, until, holder = _live_holder(store, captioner)
    worker = _worker(store_url, model_path)
    try:
        line = _Lines(worker).wait_for("Waiting for", timeout=60)
        assert holder in line and until.astimezone().isoformat(timespec="seconds") in line
        assert worker.poll() is None
        _free(store, run_id)  # the other worker finishes without drafts: this one takes over
        out, _ = worker.communicate(timeout=60)
    finally:
        worker.kill()
        session.close()
    assert worker.returncode == 0
    result = json.loads(out)
    (wait,) = result["waits"]
    assert wait["holders"] == [holder] and wait["contents"] == 1
    assert dt.datetime.fromisoformat(wait["until"]) == until
    assert result["images"] == IMAGES and result["timings"]["waited_s"] > 0
    assert [run.status for run in _runs(store)] == ["running", "completed"]
    _every_image_once(store, IMAGES)


def test_ctrl_c_ends_a_wait_at_once_and_the_run_is_interrupted(
    store, store_url, photos, captioner, model_path
):
    run_id, session, _until, _holder = _live_holder(store, captioner)
    worker = _worker(store_url, model_path)
    try:
        deadline = time.monotonic() + 60
        while _count(store, Caption) < IMAGES - 1:  # all it can do: it waits for the last
            assert worker.poll() is None, worker.stderr.read().decode()
            assert time.monotonic() < deadline, "the worker never captioned the free images"
            time.sleep(0.05)
        worker.send_signal(signal.SIGINT)  # once
        out, err = worker.communicate(timeout=20)  # the claim would hold it for ten minutes
    finally:
        worker.kill()
        session.close()
    assert worker.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["interrupted"] and result["images"] == IMAGES - 1
    other, stopped = _runs(store)
    assert (other.status, stopped.status) == ("running", "interrupted")
    assert _count(store, CaptionClaim) == 1  # the live worker's claim is untouched


def test_a_run_whose_database_session_ended_loses_its_claims_at_once(store, photos, captioner):
    """Another host's worker: nobody here can see its process. On PostgreSQL its session lock
    says it is gone; on SQLite (one host only, in practice) it is waited for."""
    model_id = _model_id(store, captioner)
    run_id, _ = _hold(store, model_id, host="elsewhere.invalid", pid=4242, started=1e9)
    session = locks.RunSession(store.engine)
    session.hold(run_id)
    session.close()  # its worker's session ended
    seen = []

    def progress(p) -> None:  # type: ignore[no-untyped-def]
        if p.waiting is not None:
            seen.append(p.waiting)
            _free(store, run_id)  # on SQLite: as when its lease runs out

    result = caption_images(store, captioner, settings=SETTINGS, workers=0, procs=0,
                            batch_size=2, progress=progress)  # fmt: skip
    assert result.images == IMAGES
    other = _runs(store)[0]
    if store.is_sqlite:
        assert [w.holders for w in seen] == [(f"run {run_id} (elsewhere.invalid pid 4242)",)]
        assert other.status == "running"
    else:
        assert seen == [] and result.waits == []
        assert other.status == "abandoned" and "database session" in other.error
    _every_image_once(store, IMAGES)


def test_a_live_worker_renews_its_claims(store, photos, captioner):
    model_id = _model_id(store, captioner)
    me = holders.me()
    _hold(store, model_id, host=me.host, pid=me.pid, started=me.started, expires_in=1)
    with store.session() as session:
        first = session.scalar(select(CaptionClaim.expires_at))
        worker = session.scalar(select(CaptionClaim.worker))
    lock = locks.RunSession(store.engine)
    with holders.Heartbeat(store, worker, dt.timedelta(seconds=1), lock):
        time.sleep(1.5)
    with store.session() as session:
        renewed = session.scalar(select(CaptionClaim.expires_at))
    assert renewed > first


def test_a_lease_under_a_second_is_refused(store, captioner):
    from labeler.errors import InputError

    with pytest.raises(InputError, match="lease"):
        caption_images(store, captioner, settings=SETTINGS, lease_s=0.5)
    assert _count(store, CaptionRun) == 0 and _count(store, Model) == 0


def test_the_holder_of_a_claim_is_this_host_and_process():
    me = holders.me()
    assert (me.host, me.pid) == (socket.gethostname(), os.getpid())
    assert not holders.process_gone(me.host, me.pid, me.started)
    assert holders.process_gone(me.host, me.pid, me.started - 60)  # another process, same pid
    assert not holders.process_gone("elsewhere.invalid", 1, 0.0)  # nobody here can tell
