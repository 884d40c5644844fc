"""Real `labeler caption` processes on one store: they split the work, a killed worker's claims
are taken over, and every image ends with exactly one set of drafts (test_caption_claims.py: how
soon, and what becomes of the dead worker's run)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager

import imagefactory as make
import psutil
import pytest
from captionkit import CALIBRATOR, tiny_checkpoint
from sqlalchemy import func, insert, select, text

from labeler.caption import holders
from labeler.files.scan import scan
from labeler.model.captioner import ShowTellFile
from labeler.model.drafts import DecodeSettings
from labeler.store import captions as caption_store
from labeler.store.models import Caption, CaptionClaim, CaptionRun, Image, StoredCalibrator, utcnow

IMAGES = 40


def _worker(store_url: str, model, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "labeler", "caption", "--model", str(model), "--db", store_url,
        "--beam", "2", "--max-len", "6", "--batch-size", "1", "--workers", "0", "--device",
        "cpu", "--json", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _prepare(store, tmp_path, calibrator=None):
    make.write_many(tmp_path / "photos", IMAGES, size=(48, 40))
    scan(store, [tmp_path / "photos"], workers=1)
    return tiny_checkpoint(tmp_path / "tiny.pt", calibrator=calibrator)


def _count(store, what):
    with store.session() as session:
        return session.scalar(select(func.count()).select_from(what))


@contextmanager
def _starting_line(store, workers: list[subprocess.Popen]):
    """Hold the store so the workers started inside block on it, and let them go together once
    both wait: otherwise the first to finish importing torch may caption everything alone."""
    if store.is_sqlite:
        path = os.path.realpath(store.engine.url.database)
        hold = sqlite3.connect(path, isolation_level=None)
        hold.execute("BEGIN IMMEDIATE")  # the workers' first write waits (busy timeout)

        def opened(pid: int) -> set[str]:
            """The files a process holds open (psutil skips descriptors closed while it looks:
            a worker importing torch opens and closes files)."""
            try:
                return {f.path for f in psutil.Process(pid).open_files()}
            except psutil.NoSuchProcess:  # exited: the caller's poll() says why
                return set()

        def waiting() -> int:
            return sum(path in opened(w.pid) for w in workers)
    else:
        conn = store.engine.connect()
        conn.execute(text("LOCK TABLE caption_runs IN ACCESS EXCLUSIVE MODE"))
        # autocommit: within one transaction pg_stat_activity is a snapshot that never changes
        watcher = store.engine.connect().execution_options(isolation_level="AUTOCOMMIT")

        def waiting() -> int:
            return watcher.scalar(text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            ))  # fmt: skip

    try:
        yield
        deadline = time.time() + 120
        while waiting() < len(workers):
            for w in workers:
                assert w.poll() is None, w.stderr.read().decode()
            assert time.time() < deadline, "the workers never reached the store"
            time.sleep(0.05)
    except psutil.AccessDenied:
        for w in workers:
            w.kill()
        pytest.skip("psutil may not list the workers' open files here, which tells when they "
                    "wait for the store")  # fmt: skip
    finally:
        if store.is_sqlite:
            hold.rollback()
            hold.close()
        else:
            conn.rollback()
            conn.close()
            watcher.close()


def _one_draft_per_image(store) -> None:
    with store.session() as session:
        per_image = session.execute(
            select(Caption.image_id, func.count()).group_by(Caption.image_id)
        ).all()
    assert len(per_image) == IMAGES and {n for _, n in per_image} == {1}


def test_two_workers_split_the_work_and_caption_each_image_once(store, store_url, tmp_path):
    model = _prepare(store, tmp_path, calibrator=CALIBRATOR)  # both register it at once
    workers: list[subprocess.Popen] = []
    with _starting_line(store, workers):
        workers += [_worker(store_url, model), _worker(store_url, model)]
    outputs = [w.communicate(timeout=300) for w in workers]
    for worker, (_out, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err.decode()
    _one_draft_per_image(store)
    with store.session() as session:
        runs = session.execute(select(CaptionRun.status, CaptionRun.counts)).all()
    assert [status for status, _ in runs] == ["completed", "completed"]
    done = [counts["images"] for _, counts in runs]
    assert sum(done) == IMAGES  # nothing captioned twice
    assert min(done) > 0, f"one worker did all the work: {done}"
    assert _count(store, CaptionClaim) == 0
    with store.session() as session:
        (calibrator,) = session.execute(select(StoredCalibrator.id, StoredCalibrator.version)).all()
        scored_by = set(session.scalars(select(Caption.calibrator_id)))
    assert calibrator.version == 1 and scored_by == {calibrator.id}


def _hold_the_last(store, model) -> None:
    """Claim the last image's content as a live holder that is no run (this test process): a
    worker can caption every other image but never finish, so it is still running whenever this
    test gets to kill it, however late that is."""
    described = ShowTellFile.read(model, device="cpu")
    me, now = holders.me(), utcnow()
    with store.write() as session:
        model_id = caption_store.register_model(
            session, content_hash=described.identity, name=described.name, family="show-tell",
            source=None, info=None,
        )  # fmt: skip
        content = session.scalar(select(Image.content_hash).order_by(Image.id.desc()).limit(1))
        session.execute(
            insert(CaptionClaim).values(
                model_id=model_id, settings_key=DecodeSettings(beam_size=2, max_len=6).key(),
                content_hash=content, worker=f"{me.host}:{me.pid}:test", host=me.host,
                pid=me.pid, process_started=me.started, run_id=None, claimed_at=now,
                expires_at=now + dt.timedelta(hours=1),
            )
        )  # fmt: skip


def _alive(process: psutil.Process) -> bool:
    """Running, as opposed to gone or a zombie (which holds no memory)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_killed_worker_loses_nothing_and_its_leases_are_taken_over(store, store_url, tmp_path):
    model = _prepare(store, tmp_path)
    _hold_the_last(store, model)
    # the victim runs the model in two processes of its own, which must not outlive it
    victim = _worker(store_url, model, "--lease", "3", "--procs", "2")
    deadline = time.time() + 120
    while _count(store, Caption) < 3:
        assert victim.poll() is None, victim.stderr.read().decode()
        assert time.time() < deadline, "the first worker never committed a batch"
        time.sleep(0.05)
    helpers = psutil.Process(victim.pid).children(recursive=True)
    assert len(helpers) >= 3  # the fork server and two model processes
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    deadline = time.time() + 30
    while any(_alive(p) for p in helpers):
        assert time.time() < deadline, "the killed worker's model processes are still running"
        time.sleep(0.2)
    committed = _count(store, Caption)
    assert 3 <= committed < IMAGES  # never the last: this test holds it
    with store.write() as session:  # let the last go: the next worker must caption it
        session.execute(CaptionClaim.__table__.delete().where(CaptionClaim.run_id.is_(None)))
    # whatever the victim held when it died (usually a batch or more) is free at once: the
    # survivor never waits, although the victim's lease is renewed only while it lives
    survivor = _worker(store_url, model, "--lease", "3")
    out, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["waits"] == [] and result["images"] == IMAGES - committed
    _one_draft_per_image(store)
    assert _count(store, CaptionClaim) == 0
    with store.session() as session:
        statuses = session.scalars(select(CaptionRun.status).order_by(CaptionRun.id)).all()
    assert statuses == ["abandoned", "completed"]  # the killed run never got to say; the next did
