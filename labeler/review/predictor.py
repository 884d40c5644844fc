"""/predict's work: a batch of Label Studio tasks to scored drafts, through the store.

Each task's image is placed on this machine (task_images.py: under the document root, or
downloaded) and registered in the store as a scan registers a file (read again only when new or
changed), in the dataset whose root holds it, else in the serve dataset (`--dataset`, rooted at
the document root) or, for downloads, in `<dataset>-downloads` rooted at the download folder.
Then the caption job's rules: a content that already has a fresh best draft from this model and
settings answers with it without the model (copied to images of that content that lack it);
the rest are claimed, captioned by the caption job's engine (engines.py: on a CPU, model
processes that decode their own batches), and their drafts, scored by the calibrator current
in the write (p_accept), are written with the claims dropped in one transaction. A content
another worker holds is captioned for the answer and left to that worker to store.

The model works in a thread of its own, each batch stored as soon as it is done. Label Studio
waits 100 s for an answer and then throws all of it away, and "Retrieve predictions" sends a
whole selection in one request: so a request is answered after `answer_within_s` (80 s) with
what is stored by then, the rest answered empty while the thread goes on; Label Studio's next
retrieval asks only for tasks without a prediction, and finds them in the store.

A task whose image cannot be placed, downloaded, read or decoded gets an answer with no text
and the reason, logged by the caller; the others in the batch are answered as usual. The
backend holds one caption run in the store for as long as it serves (`serve` as its engine in
the run's timings), finished when it stops and marked abandoned if it dies.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labeler.caption import engines, holders
from labeler.caption.job import draft_rows
from labeler.errors import InputError
from labeler.files import decode
from labeler.files.scan import record_files
from labeler.files.walk import display
from labeler.model.drafts import DecodeSettings
from labeler.review.task_images import Missed, Place, Sources, fetch, place
from labeler.store import Store, calibrators, locks
from labeler.store import captions as caption_store
from labeler.store import images as image_store
from labeler.store.models import utcnow

log = logging.getLogger(__name__)

LEASE = dt.timedelta(seconds=120)  # a claim outlives a dead backend this long at most
# Label Studio waits 100 s for /predict and then throws the whole answer away: what the model
# has not drafted by this time is answered empty, and stored when done for the next request.
ANSWER_WITHIN_S = 80.0
DOWNLOADS = 8  # a request's images downloaded at once
CLOSE_WAIT_S = 60.0  # how long stopping waits for the drafts being made to be stored


@dataclass
class _Captioning:
    """One request's contents on their way through the model, shared with its thread."""

    todo: list[caption_store.Work]
    held: set[str]  # claimed by this backend and not yet stored
    theirs: dict[str, tuple[str, float]] = field(default_factory=dict)  # held by another worker
    why: dict[int, str] = field(default_factory=dict)  # image id -> why it failed to decode
    done: bool = False
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class Answer:
    """One task's draft: its best text and score (p_accept), or no text and why."""

    text: str | None
    score: float | None = None
    reason: str = ""


def model_version(captioner, settings: DecodeSettings) -> str:  # type: ignore[no-untyped-def]
    """The name every prediction carries: the model's name (its hash) and its settings' key."""
    return f"{captioner.name}-{settings.key()}"


class Predictor:
    """A captioner, its engine and the store, for as long as the backend serves (a context
    manager: the engine and the run start on entry and stop on exit)."""

    def __init__(
        self, store: Store, captioner, settings: DecodeSettings, sources: Sources, *,  # type: ignore[no-untyped-def]
        dataset: str = "label-studio", procs: int | None = None, batch_size: int = 16,
        max_pixels: int = decode.DEFAULT_MAX_PIXELS,
        answer_within_s: float | None = ANSWER_WITHIN_S,
    ) -> None:  # fmt: skip
        if batch_size < 1:
            raise InputError("batch size must be at least 1")
        engines.check_procs(captioner, procs)
        self.store, self.captioner, self.settings = store, captioner, settings
        self.sources = sources
        self.key = settings.key()
        self.model_version = model_version(captioner, settings)
        self.procs, self.batch_size, self.max_pixels = procs, batch_size, max_pixels
        self.answer_within_s = answer_within_s  # None: wait for every draft
        self.roots = {dataset: sources.document_root, f"{dataset}-downloads": sources.download_dir}
        self.holder = holders.me()
        self.worker = f"{self.holder.host}:{self.holder.pid}:serve:{uuid.uuid4().hex[:8]}"
        self.counts: Counter[str] = Counter()
        self.model_id = self.run_id = 0
        self.scoring: calibrators.Scoring | None = None
        self._model_lock = threading.Lock()  # the model runs here: one batch at a time
        self._lock = threading.Lock()  # the three below, shared by the requests' threads
        self._drafting: set[str] = set()  # contents a request's thread is drafting now
        self._threads: set[threading.Thread] = set()  # those threads
        self._closing = False
        self._engine: Any = None
        self._run_lock: locks.RunSession | None = None

    # --- the run ------------------------------------------------------------------------------

    def __enter__(self) -> Predictor:
        self._check_datasets()
        self._run_lock = locks.RunSession(self.store.engine)
        try:
            with self.store.write() as session:
                holders.abandon_dead_runs(session, utcnow())
                c = self.captioner
                self.model_id = caption_store.register_model(
                    session, content_hash=c.identity, name=c.name, family="show-tell",
                    source=str(Path(c.source).resolve()) if c.source else None,
                    info=getattr(c, "info", None), calibrator=c.calibrator,
                )  # fmt: skip
                self.run_id = caption_store.start_run(
                    session, model_id=self.model_id, settings_key=self.key,
                    settings=self.settings.to_dict(), holder=self.holder,
                )  # fmt: skip
                self._run_lock.hold(self.run_id)
            self._engine = engines.engine_for(
                self.captioner, self.settings, procs=self.procs, workers=0,
                max_pixels=self.max_pixels,
            )  # fmt: skip
            self._engine.__enter__()
        except BaseException as exc:
            self._finish("failed", f"{type(exc).__name__}: {exc}")
            raise
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        with self._lock:
            self._closing = True  # no request starts the model from now on
            threads = list(self._threads)
        deadline = time.monotonic() + CLOSE_WAIT_S
        for thread in threads:  # what the model is drafting is stored, not thrown away
            thread.join(max(0.0, deadline - time.monotonic()))
        try:
            if self._engine is not None:
                self._engine.__exit__(exc_type, exc, tb)
        finally:
            self._finish("completed" if exc_type is None else "interrupted",
                         None if exc is None else f"{type(exc).__name__}: {exc}")  # fmt: skip

    def _finish(self, status: str, error: str | None) -> None:
        try:
            if self.run_id:
                with self.store.write() as session:
                    caption_store.release_all(session, worker=self.worker)
                    timings = dict(self._engine.describe if self._engine else {}, serve=True)
                    caption_store.finish_run(
                        session, self.run_id, status=status, counts=dict(self.counts),
                        timings=timings, error=error, now=utcnow(),
                    )  # fmt: skip
        finally:
            if self._run_lock is not None:
                self._run_lock.close()

    def _check_datasets(self) -> None:
        """The serve datasets, where they exist already, have the roots this backend uses."""
        with self.store.session() as session:
            for name, root in self.roots.items():
                found = image_store.find_dataset(session, name)
                if (
                    found is not None
                    and root is not None
                    and bytes(found.root_raw) != os.fsencode(root)
                ):
                    raise InputError(f"dataset {name!r} has root {found.root}, not {root}; "
                                     "choose another name with --dataset")  # fmt: skip

    # --- one request ---------------------------------------------------------------------------

    def predict(
        self, images: Sequence[tuple[str | Missed, object]], sources: Sources | None = None
    ) -> list[Answer]:
        """One answer per (image URL or why there is none, task id), in order; `sources` for
        this project when not the backend's own (the host and token its /setup sent)."""
        sources = sources or self.sources
        deadline = None if self.answer_within_s is None else time.monotonic() + self.answer_within_s
        answers: dict[int, Answer] = {}
        local: dict[int, Path] = {}
        with ThreadPoolExecutor(DOWNLOADS) as pool:  # downloads wait on the network: at once
            found = list(pool.map(lambda item: self._local(item, sources, deadline), images))
        for i, item in enumerate(found):
            if isinstance(item, Missed):
                answers[i] = Answer(None, reason=item.reason)
            else:
                local[i] = item
        registered = self._register(local)
        for i, item in registered.items():
            if isinstance(item, Missed):
                answers[i] = Answer(None, reason=item.reason)
        ok = {i: item for i, item in registered.items() if not isinstance(item, Missed)}
        answers.update(self._drafts(ok, deadline))
        self.counts["answered"] += sum(1 for a in answers.values() if a.text is not None)
        self.counts["unanswered"] += sum(1 for a in answers.values() if a.text is None)
        return [answers[i] for i in range(len(images))]

    def _local(
        self, item: tuple[str | Missed, object], sources: Sources, deadline: float | None
    ) -> Path | Missed:
        """One task's image as a local file (downloaded if need be), or why not: a fault of
        this task's alone (an unreadable folder, a name too long) never fails the batch."""
        url, task_id = item
        if isinstance(url, Missed):
            return url
        try:
            found = place(url, sources, task_id=task_id)
            if isinstance(found, Place) and found.url is not None and not found.path.is_file():
                if deadline is not None and time.monotonic() > deadline:
                    return Missed("not downloaded in the time a request has; retrieve again")
                found = fetch(found, sources)
            if isinstance(found, Place) and not found.path.is_file():
                return Missed(f"no such file: {found.path}")
        except OSError as exc:
            return Missed(f"cannot read {url!r:.120}: {exc.strerror or exc}")
        return found if isinstance(found, Missed) else found.path

    def register(self, path: Path) -> str | Missed:
        """Register one local file in the store (the webhook's image): the name of the
        dataset that now holds it, or why it could not be."""
        found = self._register({0: path}).get(0)
        if isinstance(found, Missed) or found is None:
            return found or Missed(f"{path}: not registered")
        with self.store.session() as session:
            return image_store.dataset_of_image(session, found[0])

    def _register(self, local: dict[int, Path]) -> dict[int, tuple[int, str] | Missed]:
        """(image id, content hash) of each file, registered as a scan would."""
        if not local:
            return {}
        out: dict[int, tuple[int, str] | Missed] = {}
        with self.store.write() as session:
            roots = image_store.dataset_roots(session)
            grouped: dict[int, list[tuple[int, bytes]]] = {}
            for i, path in local.items():
                raw = os.fsencode(path)
                dataset_id = self._dataset_for(session, raw, roots)
                rel = os.path.relpath(raw, roots[dataset_id])
                grouped.setdefault(dataset_id, []).append((i, rel))
        for dataset_id, items in grouped.items():  # files read outside any transaction
            rels = [rel for _, rel in items]
            stored = record_files(
                self.store, dataset_id, roots[dataset_id], rels, max_pixels=self.max_pixels
            )
            for i, rel in items:
                state, reason = stored[rel]
                if state.status == "ok" and state.content_hash:
                    out[i] = (state.id, state.content_hash)
                else:
                    why = f"{state.status}: {reason}" if reason else state.status
                    out[i] = Missed(f"{display(rel)}: {why}")
        return out

    def _dataset_for(self, session, raw: bytes, roots: dict[int, bytes]) -> int:  # type: ignore[no-untyped-def]
        """The dataset whose root holds the file (the deepest), else a serve dataset."""
        holding = [(len(root), i) for i, root in roots.items()
                   if os.path.commonpath([raw, root]) == root]  # fmt: skip
        if holding:
            return max(holding)[1]
        for name, root in self.roots.items():
            root_raw = os.fsencode(root) if root is not None else b""
            if root is not None and os.path.commonpath([raw, root_raw]) == root_raw:
                dataset = image_store.ensure_dataset(session, name, str(root), root_raw)
                roots[dataset.id] = bytes(dataset.root_raw)
                return dataset.id
        raise AssertionError(f"{raw!r} is under neither the document root nor the download folder")

    def _drafts(self, ok: dict[int, tuple[int, str]], deadline: float | None) -> dict[int, Answer]:
        """Answers for registered images: stored drafts, copies, or the model's, each batch
        written as it is done; what is not done within `answer_within_s` is answered empty
        and stored when done, for the next request."""
        if not ok:
            return {}
        ids = {"model_id": self.model_id, "settings_key": self.key}
        hashes = list(dict.fromkeys(h for _, h in ok.values()))
        with self.store.write() as session:
            scoring = self._scoring(session)
            work = caption_store.work_for(session, **ids, hashes=hashes, datasets=None)
            served = caption_store.copy_known_drafts(
                session, **ids, work=work, run_id=self.run_id, scoring=scoring
            )
            with self._lock:  # what an earlier request is drafting is answered when stored
                todo = [w for w in work if w.content_hash not in served
                        and w.content_hash not in self._drafting]  # fmt: skip
                if self._closing:
                    todo = []
                self._drafting.update(w.content_hash for w in todo)
            held = set(caption_store.claim(
                session, **ids, hashes=[w.content_hash for w in todo], worker=self.worker,
                holder=self.holder, run_id=self.run_id, now=utcnow(), lease=LEASE,
            ))  # fmt: skip
        self.counts["copied"] += len(served)
        batch = _Captioning(todo, held)
        if todo:
            worker = threading.Thread(target=self._caption, args=(batch,), daemon=True)
            with self._lock:
                self._threads.add(worker)
            worker.start()
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with batch.lock:
            theirs, why, done, error = dict(batch.theirs), dict(batch.why), batch.done, batch.error
        with self.store.session() as session:
            best = caption_store.best_drafts(
                session, **ids, image_ids=[image_id for image_id, _ in ok.values()]
            )
        late = "still being captioned: retrieve its prediction again in a while"
        left = f"the model failed: {error}" if error else late if not done else "no draft made"
        answers = {}
        for i, (image_id, content_hash) in ok.items():
            if image_id in best:
                _, text, p_accept = best[image_id]
                answers[i] = Answer(text, p_accept)
            elif content_hash in theirs:
                answers[i] = Answer(*theirs[content_hash])
            else:
                answers[i] = Answer(None, reason=why.get(image_id, left))
        return answers

    def _caption(self, batch: _Captioning) -> None:
        """In a thread of its own: caption the contents and store each batch as it is done.
        The contents are split into batches of at most `batch_size`, as many as a multiple of
        the model processes, of even sizes, so that the processes finish together."""
        ids = {"model_id": self.model_id, "settings_key": self.key}
        todo = batch.todo
        try:
            models = max(1, getattr(self._engine, "models", 1))
            count = -(-len(todo) // self.batch_size)
            count = min(len(todo), -(-count // models) * models)
            size = -(-len(todo) // count)
            chunks = [todo[s : s + size] for s in range(0, len(todo), size)]
            jobs = [(chunk, self._engine.submit([w.paths for w in chunk])) for chunk in chunks]
            for chunk, job in jobs:
                if isinstance(self._engine, engines.LocalEngine):
                    with self._model_lock:
                        outcome = job.result()
                else:
                    outcome = job.result()
                self._store(batch, chunk, outcome, ids)
                if batch.held:  # the rest's claims outlive this batch's wait
                    with self.store.write() as session:
                        caption_store.renew_all(session, worker=self.worker,
                                                until=utcnow() + LEASE)  # fmt: skip
        except Exception as exc:  # answered as the reason, and logged with its traceback
            log.exception("captioning for /predict failed")
            with batch.lock:
                batch.error = f"{type(exc).__name__}: {exc}"
        finally:
            with batch.lock:
                batch.done = True
            with self._lock:
                self._drafting.difference_update(w.content_hash for w in todo)
                self._threads.discard(threading.current_thread())
            if batch.held:  # not stored: give the claims back at once
                with self.store.write() as session:
                    caption_store.release(
                        session, **ids, hashes=sorted(batch.held), worker=self.worker
                    )

    def _store(self, batch: _Captioning, chunk, outcome, ids) -> None:  # type: ignore[no-untyped-def]
        results, failures = [], []
        for work, decoded, drafts in zip(chunk, outcome.decoded, outcome.drafts, strict=True):
            failures += decoded.failures(work)
            if drafts is not None:
                results.append((work, draft_rows(drafts)))
        hashes = [w.content_hash for w in chunk if w.content_hash in batch.held]
        with self.store.write() as session:
            scoring = self._scoring(session)
            mine = [(w, rows) for w, rows in results if w.content_hash in batch.held]
            now = utcnow()
            caption_store.save_drafts(
                session, **ids, run_id=self.run_id, results=mine, now=now, scoring=scoring
            )
            caption_store.fail_images(session, failures, now)
            caption_store.release(session, **ids, hashes=hashes, worker=self.worker)
        theirs = {}  # contents another worker stores: answered from this model's own drafts
        for work, rows in results:
            if work.content_hash not in batch.held:
                scoring.score(rows[:1])
                theirs[work.content_hash] = (rows[0]["text"], rows[0]["p_accept"])
        with batch.lock:
            batch.held.difference_update(hashes)
            batch.theirs.update(theirs)
            batch.why.update(
                {image_id: f"{status}: {reason}" for image_id, status, reason in failures}
            )
            self.counts["captioned"] += len(mine)  # stored by this backend
            self.counts["model_contents"] += len(chunk)  # through the model, stored or not

    def _scoring(self, session) -> calibrators.Scoring:  # type: ignore[no-untyped-def]
        calibrators.lock_model(session, self.model_id, exclusive=False)
        self.scoring = calibrators.current(
            session, model_id=self.model_id, settings_key=self.key, known=self.scoring
        )
        return self.scoring
