"""`labeler caption`: draft captions for every readable image that lacks them, safely in bulk.

The loop, per batch: claim up to `batch_size` contents (store/captions.py explains the claims),
hand them to the engine (engines.py: the model here with loader processes decoding, or on a CPU
several model processes that decode their own batches), then write the drafts and drop the
claims in one transaction. The model is built in this process only when it runs here: given a
checkpoint only read (engines.open_model), the run records its identity and the engine builds
it, here or in each model process. The engine always has the next batches in hand (claimed,
decoding or waiting for a free model process) while it works on the current one, so the model,
not the loader or the store, sets the pace. Nothing is ever half-written: a run killed at any moment
leaves the batches it committed. Each draft is written with its p_accept, scored here at write
time, a batch with one prediction, by the calibrator current in that write's transaction
(store/calibrators.py): a `labeler calibrate` during the run rescores what was written and scores
what comes after.

Dead and live workers (holders.py). A heartbeat thread renews this worker's claims every quarter
of `lease_s` (60 s by default) whatever the model is doing, so a batch may take as long as it
takes. Each pass over the work, and each run's start, first frees the claims of holders found
gone (on this host, a process no longer there; on PostgreSQL, a run whose session ended) and
marks their runs `abandoned`: a killed worker's work is taken over at once. The lease is the last
resort for a holder nobody can look at; `lease_s` is this worker's own, other workers' claims
keep the lease they were given. With nothing left to claim while live workers hold the rest, a
worker waits for them, polling, and reports whom it waits for and until when through `progress`.

`should_stop` is polled between batches and, while waiting for others, every tenth of a second:
Ctrl-C in the CLI sets it; the batches the model has started on are finished and committed, the
others given back (a waiting worker holds none and stops at once), and the run ends
`interrupted`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labeler.caption import engines, holders, ray_engine
from labeler.errors import InputError
from labeler.model.drafts import DecodeSettings
from labeler.store import Store, calibrators, locks
from labeler.store import captions as caption_store
from labeler.store import images as image_store
from labeler.store.models import utcnow

POLL_S = 1.0  # how often a worker with nothing to claim looks again while others hold claims
STOP_POLL_S = 0.1  # how often a waiting worker looks at `should_stop`
DEFAULT_LEASE_S = 60.0  # renewed every quarter of it: a dead worker nobody can see blocks this long


@dataclass(frozen=True)
class Wait:
    """This worker has nothing left to claim while other live workers hold the rest: whom it
    waits for, how many contents they hold, since when, and until when their claims last unless
    renewed (they renew them while they run, so the wait ends when they finish or die)."""

    holders: tuple[str, ...]  # "run 7 (host pid 1234)"
    contents: int
    since: dt.datetime
    until: dt.datetime

    def to_dict(self) -> dict[str, Any]:
        return {"holders": list(self.holders), "contents": self.contents,
                "since": self.since.isoformat(), "until": self.until.isoformat()}  # fmt: skip


@dataclass
class CaptionProgress:
    done: int  # images that got drafts in this run
    total: int  # images that needed drafts when the run started (others may share the work)
    failed: int
    waiting: Wait | None = None  # set while this worker waits for others' claims


@dataclass
class CaptionResult:
    run_id: int
    model: str
    settings_key: str
    images: int = 0  # images that got drafts
    contents: int = 0  # distinct contents the model captioned
    copied: int = 0  # images served from an identical image's existing drafts
    failed: Counter[str] = field(default_factory=Counter)  # "status: reason" -> images
    flagged: int = 0  # best drafts that are unfinished, repetitive or hold an unknown word
    unfinished: int = 0  # best drafts that used every decoding step without ending
    confidence_sum: float = 0.0
    p_accept_sum: float = 0.0
    interrupted: bool = False
    given_back: int = 0  # contents claimed but left uncaptioned when the run was stopped
    waits: list[Wait] = field(default_factory=list)  # one per set of workers waited for
    elapsed_s: float = 0.0
    timings: dict[str, Any] = field(default_factory=dict)  # seconds, and how the model ran

    @property
    def mean_confidence(self) -> float | None:
        return self.confidence_sum / self.images if self.images else None

    @property
    def mean_p_accept(self) -> float | None:
        return self.p_accept_sum / self.images if self.images else None

    def counts(self) -> dict[str, Any]:
        return {
            "images": self.images, "contents": self.contents, "copied": self.copied,
            "failed": dict(self.failed), "flagged": self.flagged, "unfinished": self.unfinished,
            "mean_confidence": self.mean_confidence, "mean_p_accept": self.mean_p_accept,
            "given_back": self.given_back,
        }  # fmt: skip


@dataclass
class _Batch:
    hashes: list[str]
    work: list[caption_store.Work]
    job: engines.Job


class _Run:
    """One worker's state: the store, the model, the claims it holds, and the tallies."""

    def __init__(self, store, settings, datasets, lease, result, engine, progress, should_stop,  # type: ignore[no-untyped-def]
                 total) -> None:  # fmt: skip
        self.store = store
        self.settings = settings
        self.key = settings.key()
        self.datasets = datasets
        self.lease = lease
        self.result = result
        self.engine = engine
        self.progress = progress
        self.should_stop = should_stop or (lambda: False)
        self.total = total
        self.holder = holders.me()
        self.worker = f"{self.holder.host}:{self.holder.pid}:{uuid.uuid4().hex[:8]}"
        self.heartbeat: holders.Heartbeat | None = None
        self.waiting: Wait | None = None  # the wait going on, if any
        self.model_id = 0
        self.cursor = 0
        self.timings: Counter[str] = Counter()
        self.peaks: dict[int, int] = {}  # model process -> peak resident KiB
        self.scoring: calibrators.Scoring | None = None  # the calibrator last found current

    def _ids(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "settings_key": self.key}

    def _scoring(self, session) -> calibrators.Scoring:  # type: ignore[no-untyped-def]
        """The calibrator current in this write transaction (a refit waits for it to end)."""
        calibrators.lock_model(session, self.model_id, exclusive=False)
        self.scoring = calibrators.current(session, **self._ids(), known=self.scoring)
        return self.scoring

    def next_batch(self, size: int, *, wait: bool = True) -> _Batch | None:
        """Claim and start decoding the next batch. None when no work is left anywhere, when
        asked to stop while waiting, or, without `wait`, when what is left is claimed by others
        (a worker holding a batch must never wait for another's: two of them would wait for
        each other). Each pass over the work starts by freeing the claims of the dead."""
        try:
            return self._next_batch(size, wait)
        finally:
            self.waiting = None

    def _next_batch(self, size: int, wait: bool) -> _Batch | None:
        while True:
            with self.store.write() as session:
                now = utcnow()
                if self.cursor == 0:
                    holders.free_dead(session, self.worker, now)
                rows = caption_store.pending(
                    session, **self._ids(), datasets=self.datasets, after_id=self.cursor,
                    limit=size * 4, now=now,
                )  # fmt: skip
                if rows:
                    self.cursor = rows[-1][0]
                    wanted = list(dict.fromkeys(h for _, h in rows))[:size]
                    held = caption_store.claim(
                        session, **self._ids(), hashes=wanted, worker=self.worker,
                        holder=self.holder, run_id=self.result.run_id, now=now, lease=self.lease,
                    )  # fmt: skip
                    batch = self._prepare(session, held) if held else None
                    if batch is not None:
                        return batch
                    continue
                others = [] if self.cursor else caption_store.claim_holders(
                    session, **self._ids(), worker=self.worker, now=now
                )  # fmt: skip
            if self.cursor:
                self.cursor = 0  # a pass found nothing above the cursor: look from the start
                continue
            if not others or not wait or not self._wait(others):
                return None

    def _wait(self, others: Sequence[caption_store.ClaimHolder]) -> bool:
        """Say whom this worker waits for and until when, then sleep a poll; False when asked
        to stop meanwhile, which ends the wait at once and the run `interrupted`."""
        names = tuple(o.describe() for o in others)
        until = min(o.until for o in others)
        wait = Wait(names, sum(o.contents for o in others), utcnow(), until)
        if self.waiting is not None and self.waiting.holders == names:
            wait = dataclasses.replace(wait, since=self.waiting.since)  # the same wait goes on
            self.result.waits[-1] = wait
        else:
            self.result.waits.append(wait)
        self.waiting = wait
        self.report(wait)
        started = time.perf_counter()
        try:
            while time.perf_counter() - started < POLL_S:
                if self.should_stop():
                    self.result.interrupted = True
                    return False
                time.sleep(STOP_POLL_S)
        finally:
            self.timings["waited_s"] += time.perf_counter() - started
        return True

    def report(self, waiting: Wait | None = None) -> None:
        """Progress to the caller; first, any failure of the heartbeat (the claims are lost)."""
        if self.heartbeat is not None:
            self.heartbeat.check()
        if self.progress is not None:
            done = self.result.images + self.result.copied
            failed = sum(self.result.failed.values())
            self.progress(CaptionProgress(done, self.total, failed, waiting))

    def _prepare(self, session, held: list[str]) -> _Batch | None:  # type: ignore[no-untyped-def]
        work = caption_store.work_for(session, **self._ids(), hashes=held, datasets=self.datasets)
        served = caption_store.copy_known_drafts(
            session, **self._ids(), work=work, run_id=self.result.run_id,
            scoring=self._scoring(session),
        )  # fmt: skip
        todo = [w for w in work if w.content_hash not in served]
        self.result.copied += sum(len(w.image_ids) for w in work if w.content_hash in served)
        done = [h for h in held if h not in {w.content_hash for w in todo}]
        caption_store.release(session, **self._ids(), hashes=done, worker=self.worker)
        if not todo:
            return None
        job = self.engine.submit([w.paths for w in todo])
        return _Batch([w.content_hash for w in todo], todo, job)

    def finish_batch(self, batch: _Batch) -> None:
        """Wait for the batch's drafts and commit them and its failures at once."""
        started = time.perf_counter()
        outcome = batch.job.result()
        self.timings["wait_s"] += time.perf_counter() - started
        engines.add_timings(self.timings, self.peaks, outcome)
        results = [(w, drafts) for w, drafts in zip(batch.work, outcome.drafts, strict=True)
                   if drafts is not None]  # fmt: skip
        started = time.perf_counter()
        pairs = zip(batch.work, outcome.decoded, strict=True)
        failures = [f for w, d in pairs for f in d.failures(w)]
        rows = [(w, draft_rows(drafts)) for w, drafts in results]
        with self.store.write() as session:
            now = utcnow()
            best = caption_store.save_drafts(
                session, **self._ids(), run_id=self.result.run_id, results=rows, now=now,
                scoring=self._scoring(session),
            )  # fmt: skip
            caption_store.fail_images(session, failures, now)
            caption_store.release(session, **self._ids(), hashes=batch.hashes, worker=self.worker)
        self.timings["store_s"] += time.perf_counter() - started
        self._tally(results, best, failures)

    def stop(self, batches: Sequence[_Batch]) -> int:
        """Give back the batches the model has not started on; finish and commit the others.
        Returns how many contents were given back."""
        self.engine.stop()
        unstarted = [b for b in batches if b.job.cancel()]
        for batch in batches:
            if batch in unstarted:
                continue
            if batch.job.result().skipped:
                unstarted.append(batch)
            else:
                self.finish_batch(batch)
        if unstarted:
            with self.store.write() as session:
                hashes = [h for b in unstarted for h in b.hashes]
                caption_store.release(session, **self._ids(), hashes=hashes, worker=self.worker)
        return sum(len(b.work) for b in unstarted)

    def _tally(self, results, p_accepts, failures) -> None:  # type: ignore[no-untyped-def]
        for (work, drafts), p_accept in zip(results, p_accepts, strict=True):
            best = drafts.best
            n = len(work.image_ids)
            self.result.images += n
            self.result.contents += 1
            self.result.confidence_sum += best.confidence * n
            self.result.p_accept_sum += p_accept * n
            if not best.finished or best.repeated_ngram or best.has_unknown:
                self.result.flagged += n
            self.result.unfinished += 0 if best.finished else n
        for _, status, reason in failures:
            self.result.failed[f"{status}: {reason}"] += 1


def draft_rows(drafts) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]  # ImageDrafts
    """A content's drafts, best first, as the store's draft columns (DRAFT_COLUMNS)."""
    return [
        {"text": d.text, "log_likelihood": d.log_likelihood, "num_tokens": d.num_tokens,
         "confidence": d.confidence, "score": d.score, "token_logprobs": d.token_logprobs,
         "margin": drafts.margin, "finished": d.finished, "repeated_ngram": d.repeated_ngram,
         "has_unknown": d.has_unknown}
        for d in drafts.drafts
    ]  # fmt: skip


def caption_images(
    store: Store,
    captioner,  # type: ignore[no-untyped-def]  # a Captioner, or a ShowTellFile (engines.open_model)
    *,
    settings: DecodeSettings,
    datasets: Sequence[str] | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    procs: int | None = None,
    limit: int | None = None,
    recaption: bool = False,
    lease_s: float = DEFAULT_LEASE_S,
    model_source: str | None = None,
    ray: ray_engine.RayOptions | None = None,
    progress: Callable[[CaptionProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> CaptionResult:
    """Caption every readable image in scope that has no fresh draft from this model and
    settings; safe to run in several processes on one store.

    `captioner`: a captioner already built, or a checkpoint only read (from engines.open_model,
    which picks between the two from `procs` and the device: the model is built in this
    process only when it runs here). `procs`: model processes (engines.py); None decides (one
    per core on a CPU for a run of 500 images or more, else none), 0 runs the model here with
    `workers` loader processes (0: decoding inline too). `lease_s`: how long this worker's
    claims outlive it where nobody can see that it died (the module docstring).
    `model_source`: the file recorded with the model, when not the captioner's own `source`.
    `ray`: run the model on a Ray cluster instead (ray_engine.py; `procs` and `workers` are the
    local engines' and must be left unset)."""
    if batch_size < 1:
        raise InputError("batch size must be at least 1")
    if limit is not None and limit < 1:
        raise InputError("the limit must be at least 1 image")
    if lease_s < 1:
        raise InputError("the lease must be at least 1 second")
    if ray is None:
        engines.check_procs(captioner, procs)
    elif procs is not None or workers is not None:
        raise InputError("--procs and --workers are the local engine's; with --engine ray, "
                         "--ray-actors sets how many copies of the model run")  # fmt: skip
    else:
        ray_engine.check(captioner, ray)
    started = time.perf_counter()
    with contextlib.closing(locks.RunSession(store.engine)) as lock:  # PostgreSQL: its lock
        scope, model_id, run = _begin(store, captioner, settings, datasets, recaption,
                                      model_source, lock)  # fmt: skip
        result = CaptionResult(run_id=run, model=captioner.name, settings_key=settings.key())
        with store.session() as session:
            total, _ = caption_store.count_pending(
                session, model_id=model_id, settings_key=settings.key(), datasets=scope
            )
        engine: Any = (
            ray_engine.RayEngine(captioner, settings, ray) if ray is not None
            else engines.engine_for(captioner, settings, procs=procs, workers=workers,
                                    pending=total)
        )  # fmt: skip
        lease = dt.timedelta(seconds=lease_s)
        state = _Run(store, settings, scope, lease, result, engine, progress, should_stop, total)
        state.model_id = model_id
        status, error = "completed", None
        try:
            with engine, holders.Heartbeat(store, state.worker, lease, lock) as state.heartbeat:
                _loop(state, batch_size, limit)  # model processes load first: their error is
            status = "interrupted" if result.interrupted else "completed"  # the run's error
        except BaseException as exc:
            status, error = ("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                             f"{type(exc).__name__}: {exc}")  # fmt: skip
            raise
        finally:
            result.elapsed_s = time.perf_counter() - started
            _timings(state, result)
            _end(store, state, result, status, error)
    return result


def _timings(state, result) -> None:  # type: ignore[no-untyped-def]
    result.timings = {k: round(v, 3) for k, v in state.timings.items()}
    result.timings.update(state.engine.describe)
    if state.peaks:
        result.timings["procs_peak_rss_mib"] = [round(kib / 1024) for kib in state.peaks.values()]


def _loop(state, batch_size, limit) -> None:  # type: ignore[no-untyped-def]
    # The first batches ramp up from an eighth of the batch size, doubling: the model starts as
    # soon as a few images are decoded, and each batch decodes while the one before, half its
    # size, is captioned; a full first batch would leave the model idle for its whole decode.
    # With several model processes the last batches shrink, down to that first size, so that
    # the processes finish together: whole batches to the end would leave one process
    # captioning the last alone while the others wait (a batch's time, every run).
    smallest = ramp = max(1, batch_size // 8)
    models = state.engine.models
    in_hand: deque[_Batch] = deque()
    while True:
        if state.should_stop():  # before claiming more
            state.result.given_back = state.stop(in_hand)
            state.result.interrupted = True
            return
        while len(in_hand) < state.engine.depth:
            room = None
            if limit is not None:
                room = limit - state.result.images - sum(len(b.work) for b in in_hand)
            size = ramp if room is None else min(ramp, room)
            if models > 1:
                held = sum(len(w.image_ids) for b in in_hand for w in b.work)
                result = state.result
                left = (state.total - result.images - result.copied
                        - sum(result.failed.values()) - held)  # fmt: skip
                size = min(size, max(smallest, -(-left // (models + 1))))
            # a worker holding batches must never wait for another's claims (two such workers
            # would wait for each other): it only waits when it holds nothing
            batch = state.next_batch(size, wait=not in_hand) if size > 0 else None
            if batch is None:
                break
            in_hand.append(batch)
            ramp = min(batch_size, ramp * 2)
        if not in_hand:  # all done, or stopped while waiting for others (it holds nothing)
            return
        state.finish_batch(in_hand.popleft())
        state.report()


def _begin(store, captioner, settings, datasets, recaption, source, lock):  # type: ignore[no-untyped-def]
    """Register the model and start the run, after marking runs found dead `abandoned`; the
    run's lock (PostgreSQL) is taken before its row commits, so nobody sees it unlocked."""
    if source is None and getattr(captioner, "source", None) is not None:
        source = str(Path(captioner.source).resolve())
    with store.write() as session:
        holders.abandon_dead_runs(session, utcnow())
        scope = None
        if datasets:
            scope = sorted(image_store.dataset_ids(session, datasets).values())
        model_id = caption_store.register_model(
            session, content_hash=captioner.identity, name=captioner.name,
            family=getattr(captioner, "family", "show-tell"), source=source,
            info=getattr(captioner, "info", None),
            calibrator=getattr(captioner, "calibrator", None),  # plug-in captioners may lack it
        )  # fmt: skip
        if recaption:
            caption_store.mark_all_stale(
                session, model_id=model_id, settings_key=settings.key(), datasets=scope
            )
        run_id = caption_store.start_run(
            session, model_id=model_id, settings_key=settings.key(), settings=settings.to_dict(),
            holder=holders.me(),
        )  # fmt: skip
        lock.hold(run_id)
    return scope, model_id, run_id


def _end(store, state, result, status, error) -> None:  # type: ignore[no-untyped-def]
    """Record the run and give back any claim still held (an error, a second Ctrl-C)."""
    with store.write() as session:
        caption_store.release_all(session, worker=state.worker)
        caption_store.finish_run(
            session, result.run_id, status=status, counts=result.counts(),
            timings={**result.timings, "total_s": round(result.elapsed_s, 3)}, error=error,
            now=utcnow(),
        )  # fmt: skip
