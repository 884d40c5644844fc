"""Where the caption job's model runs: in this process fed by loader processes, or, on a CPU, in
several processes that each hold a copy, use a share of the cores and decode their own batches.

Both engines take a batch (one task per content: its paths) and hand back a job whose `result()`
is the batch's `Outcome`: each content decoded or failed, and the drafts of those that decoded.
`cancel()` is true when the job never ran and never will, so its leases can be given back. After
the engine's `stop()`, a batch no process has begun comes back `skipped`, to be given back too
(a process pool's queued calls cannot be cancelled once handed to it, which the next is).

Why processes on a CPU. One process running the model on two threads keeps both threads in step
at every operation: each of the beam search's small steps and each of mobilenet's depthwise
convolutions ends at a barrier, and whenever the loader's decoding (or anything else) takes one
of the cores, the other thread waits there. Two processes of one thread each never wait for each
other, and a process decoding its next batch leaves the other's model running. On this
project's 2-core machine (random weights, vocabulary 10,000, beam 3, batch 32, see
benchmarks/bench_caption.py) the bare model runs faster as 2 processes x 1 thread than as
1 process x 2 threads: mobilenet_v3_large 32-34 against 26-27 images/s, resnet50 7.9-9.0
against 6.8-7.5 (one run, a slow spell); and `labeler caption` on mobilenet ran at 30.5-30.9
images/s this way against 20.1-22.0 with the model in the main process and a loader beside it.
Each process decoding inline costs what the decoding costs and nothing more, and the parent
only leases and writes.

The parent needs the model only where it runs it. `open_model` picks that before reading the
checkpoint: where the model certainly runs here (`--procs 0`, a GPU, one core) it builds it at
once; otherwise it only reads the file's identity and metadata (a `ShowTellFile`: the file is
hashed and mapped, its weights never read), and the local engine builds the model when it
starts, should the run turn out to be too small for model processes. Each model process loads
the checkpoint itself from that one path and checks its hash against the one the run is
recorded under: a file replaced since the run began is an error, not another model's drafts
under this one's name. On a GPU the model stays in this process, where loader processes overlap
with it by construction.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Executor, Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from labeler.caption import loader
from labeler.errors import ModelError
from labeler.files import decode
from labeler.pools import process_context, worker_pool

MAX_PROCS = 8  # more copies of the model cost memory for a smaller share of the cores each
# Starting the processes costs about 5 s here (torch imported, the model loaded), which a ~30%
# faster model earns back after about 15 s of captioning: a few hundred images.
AUTO_MIN_IMAGES = 500
READY_TIMEOUT_S = 600.0  # the longest a model process waits for the others to load
# torch imported once, in the server
PRELOAD = ["labeler.caption.engines", "labeler.model.captioner"]


@dataclass
class Outcome:
    """One batch: per content, what decoding said (pixels dropped) and its drafts (None where
    no path decoded), in the batch's order; and the seconds spent decoding and in the model."""

    decoded: list[loader.Decoded]
    drafts: list[Any]  # labeler.model.drafts.ImageDrafts | None
    timings: dict[str, float] = field(default_factory=dict)
    process: tuple[int, int] | None = None  # a model process's (pid, peak resident KiB so far)
    skipped: bool = False  # the engine was stopped before a process began it: nothing was done


class Job(Protocol):
    def result(self) -> Outcome: ...

    def cancel(self) -> bool: ...


SKIPPED = Outcome([], [], skipped=True)


def run_model(captioner, decoded: list[loader.Decoded], settings) -> Outcome:  # type: ignore[no-untyped-def]
    """The model on the contents that decoded; the pixels are dropped from what is returned."""
    usable = [i for i, d in enumerate(decoded) if d.pixels is not None]
    drafts: list[Any] = [None] * len(decoded)
    started = time.perf_counter()
    if usable:
        pixels = loader.stack([decoded[i].pixels for i in usable], captioner)
        for i, found in zip(usable, captioner.caption(pixels, settings), strict=True):
            drafts[i] = found
    stripped = [loader.Decoded(None, d.errors) for d in decoded]
    return Outcome(stripped, drafts, {"model_s": time.perf_counter() - started})


def portable(captioner) -> bool:  # type: ignore[no-untyped-def]
    """Whether another process can load this captioner itself: Show and Tell on a CPU, from its
    checkpoint file (built here or only read)."""
    from labeler.model.captioner import ShowTellCaptioner, ShowTellFile

    return (
        type(captioner) in (ShowTellCaptioner, ShowTellFile)
        and captioner.device.type == "cpu"
        and captioner.source is not None
    )


def core_budget() -> int:
    """The threads torch would use here (OMP_NUM_THREADS or the cores it may run on)."""
    import torch

    return max(1, torch.get_num_threads())


def auto_procs(captioner, pending: int | None = None) -> int:  # type: ignore[no-untyped-def]
    """Model processes for `--procs` left to decide: one per core torch would use (at most
    MAX_PROCS), or 0 (the model here) on a GPU, with one core, for a captioner that cannot be
    loaded elsewhere, or for fewer than AUTO_MIN_IMAGES images, which would not earn back the
    seconds the processes take to load the model."""
    cores = core_budget()
    few = pending is not None and pending < AUTO_MIN_IMAGES
    return min(cores, MAX_PROCS) if cores >= 2 and portable(captioner) and not few else 0


class _LocalJob:
    def __init__(self, engine: LocalEngine, futures: list[Future[list[loader.Decoded]]]) -> None:
        self.engine = engine
        self.futures = futures
        self.outcome: Outcome | None = None

    def cancel(self) -> bool:
        for future in self.futures:
            future.cancel()
        return self.outcome is None  # the model never ran on it

    def result(self) -> Outcome:
        if self.outcome is None:
            started = time.perf_counter()
            decoded = [d for f in self.futures for d in f.result()]
            waited = time.perf_counter() - started
            self.outcome = run_model(self.engine.captioner, decoded, self.engine.settings)
            self.outcome.timings["decode_wait_s"] = waited
        return self.outcome


class LocalEngine:
    """The model in this process; loader processes decode the next batch while it runs. Given a
    checkpoint only read (a ShowTellFile), it builds the model as it starts (`start_s`)."""

    depth = 2  # batches in hand: one in the model, the next decoding
    models = 1

    def __init__(self, captioner, settings, *, workers: int | None = None,
                 max_pixels: int = decode.DEFAULT_MAX_PIXELS) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
        self.captioner = captioner
        self.settings = settings
        self.loader = loader.Loader(captioner, workers=workers, max_pixels=max_pixels)
        self.describe: dict[str, Any] = {"engine": "local", "loader_workers": self.loader.workers}

    def __enter__(self) -> LocalEngine:
        from labeler.model.captioner import ShowTellFile

        if isinstance(self.captioner, ShowTellFile):
            started = time.perf_counter()
            self.captioner = self.captioner.load()
            self.describe["start_s"] = round(time.perf_counter() - started, 3)
        self.loader.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loader.__exit__(*exc)

    def submit(self, tasks: Sequence[Sequence[bytes]]) -> Job:
        return _LocalJob(self, self.loader.submit(tasks))

    def stop(self) -> None:
        """Nothing to do: a job here runs the model only when its result is asked for."""


@dataclass(frozen=True)
class ModelSpec:
    """What a model process (or a Ray actor, ray_engine.py) needs to load the captioner and
    decode for it."""

    path: str
    identity: str
    threads: int
    channels_last: bool
    max_pixels: int
    device: str = "cpu"  # a Ray actor given a GPU: "cuda"


_loaded: dict[ModelSpec, Any] = {}  # in a model process: the captioner of the spec it was given
_started: threading.Barrier | None = None  # in a model process: all of them loaded
_stopping: Any = None  # in a model process: the engine's stop event


def _keep_shared(barrier, stopping) -> None:  # type: ignore[no-untyped-def]
    """Pool initializer: the barrier and the event can only reach a process as it starts."""
    global _started, _stopping
    _started, _stopping = barrier, stopping


def _ready(spec: ModelSpec) -> None:
    """Load the model, then wait for every other process to have loaded it: a process waiting
    here takes no other task, so each process runs exactly one of these."""
    assert _started is not None
    try:
        _captioner(spec)
    except BaseException:
        _started.abort()  # the others stop waiting; this error is what the parent reports
        raise
    _started.wait(READY_TIMEOUT_S)


def _captioner(spec: ModelSpec):  # type: ignore[no-untyped-def]
    captioner = _loaded.get(spec)
    if captioner is None:
        import torch

        from labeler.model.captioner import load_exactly

        torch.set_num_threads(spec.threads)
        captioner = load_exactly(
            spec.path, spec.identity, device=spec.device, channels_last=spec.channels_last
        )
        _loaded.clear()
        _loaded[spec] = captioner
    return captioner


def caption_batch(spec: ModelSpec, tasks: Sequence[Sequence[bytes]], settings) -> Outcome:  # type: ignore[no-untyped-def]
    """In a model process: decode the batch, then caption what decoded (unless stopped)."""
    if _stopping is not None and _stopping.is_set():
        return SKIPPED
    captioner = _captioner(spec)
    started = time.perf_counter()
    prep = captioner.preprocessing
    decoded = loader.decode_many(tasks, prep.to_array, int(prep.resize), spec.max_pixels)
    decode_s = time.perf_counter() - started
    outcome = run_model(captioner, decoded, settings)
    outcome.timings["decode_s"] = decode_s
    outcome.process = (os.getpid(), _peak_rss_kib())
    return outcome


def _peak_rss_kib() -> int:
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes there, KiB elsewhere


class ProcessEngine:
    """`procs` processes, each with its own copy of the model on `threads` threads, each
    decoding and captioning whole batches; one batch more than processes is kept in hand so
    that a process that finishes finds the next one waiting."""

    def __init__(self, captioner, settings, *, procs: int, threads: int | None = None,
                 max_pixels: int = decode.DEFAULT_MAX_PIXELS) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
        if procs < 1 or not portable(captioner):
            raise ValueError("model processes need Show and Tell on a CPU, read from a file")
        threads = max(1, core_budget() // procs) if threads is None else threads
        self.spec = ModelSpec(str(Path(captioner.source).resolve()), captioner.identity, threads,
                          bool(captioner.channels_last), max_pixels)  # fmt: skip
        self.settings = settings
        self.procs = self.models = procs
        self.depth = procs + 1
        self.describe: dict[str, Any] = {"engine": "processes", "procs": procs,
                                         "threads_each": threads}  # fmt: skip
        self._pool: Executor | None = None
        self._stopping: Any = None

    def __enter__(self) -> ProcessEngine:
        """Start the processes and wait until each has loaded the model (`start_s`): a model
        file that cannot be loaded fails here, before any image is leased."""
        started = time.perf_counter()
        context = process_context(PRELOAD)
        barrier, self._stopping = context.Barrier(self.procs), context.Event()
        initializer = functools.partial(_keep_shared, barrier, self._stopping)
        self._pool = worker_pool(self.procs, preload=PRELOAD, initializer=initializer)
        try:
            ready = [self._pool.submit(_ready, self.spec) for _ in range(self.procs)]
            _, late = futures_wait(ready, timeout=READY_TIMEOUT_S + 30)
            failed = [f.exception() for f in ready if f not in late and f.exception()]
            real = [e for e in failed if not isinstance(e, threading.BrokenBarrierError)]
            if real:
                raise real[0]
            if failed or late:
                raise ModelError(f"the model processes did not all load {self.spec.path} "
                                 f"within {READY_TIMEOUT_S:.0f} s")  # fmt: skip
        except BaseException:
            self._terminate()
            raise
        self.describe["start_s"] = round(time.perf_counter() - started, 3)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            assert self._pool is not None
            self._pool.shutdown(wait=True, cancel_futures=True)
        else:  # an error or a second Ctrl-C: what the processes are doing is thrown away
            self._terminate()

    def _terminate(self) -> None:
        """Stop the processes now rather than after their batches (they ignore SIGINT)."""
        assert self._pool is not None
        self.stop()
        processes = list((getattr(self._pool, "_processes", None) or {}).values())  # no API
        self._pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(10)

    def stop(self) -> None:
        """Batches no process has begun come back skipped from now on."""
        if self._stopping is not None:
            self._stopping.set()

    def submit(self, tasks: Sequence[Sequence[bytes]]) -> Job:
        assert self._pool is not None, "use the engine as a context manager"
        tasks = [tuple(paths) for paths in tasks]
        return self._pool.submit(caption_batch, self.spec, tasks, self.settings)


def check_procs(captioner, procs: int | None) -> None:  # type: ignore[no-untyped-def]
    """InputError for a `--procs` this captioner cannot have (the caption job asks once, before
    its run begins; engine_for takes what passed)."""
    from labeler.errors import InputError

    if procs is not None and procs < 0:
        raise InputError("--procs must be 0 or more")
    if procs and not portable(captioner):
        raise InputError("--procs runs the model in separate processes on a CPU only; on a GPU "
                         "use --procs 0 (the default there)")  # fmt: skip


def open_model(path: str | os.PathLike[str], *, device: str = "auto", procs: int | None = None,
               remote: bool = False):  # type: ignore[no-untyped-def]  # fmt: skip
    """The checkpoint at `path` as the caption job will use it with `procs` (as caption_images
    takes it): the captioner built here when the model certainly runs in this process (procs 0,
    a GPU, one core), else a ShowTellFile, only read (model processes build their own copies;
    the local engine builds it should the run be too small for them). `remote`: the model runs
    on a Ray cluster (ray_engine.py), so it is only read, whatever `device` says."""
    from labeler.model.captioner import ShowTellCaptioner, ShowTellFile, pick_device

    if remote:
        return ShowTellFile.read(path, device="cpu")
    chosen = pick_device(device)
    here = procs == 0 or (procs is None and (chosen.type != "cpu" or core_budget() < 2))
    if here:
        return ShowTellCaptioner.from_checkpoint(path, device=chosen)
    return ShowTellFile.read(path, device=chosen)


def engine_for(captioner, settings, *, procs: int | None, workers: int | None,
               pending: int | None = None,
               max_pixels: int = decode.DEFAULT_MAX_PIXELS) -> LocalEngine | ProcessEngine:  # type: ignore[no-untyped-def]  # fmt: skip
    """The engine `procs` (checked by check_procs) asks for: None decides (auto_procs, given the
    images `pending`), 0 is the model in this process with `workers` loader processes, N >= 1
    is N model processes."""
    chosen = auto_procs(captioner, pending) if procs is None else procs
    if chosen == 0:
        return LocalEngine(captioner, settings, workers=workers, max_pixels=max_pixels)
    return ProcessEngine(captioner, settings, procs=chosen, max_pixels=max_pixels)


def add_timings(into: Counter[str], peaks: dict[int, int], outcome: Outcome) -> None:
    """Sum the outcome's seconds into `into`; keep each model process's peak memory."""
    for key, value in outcome.timings.items():
        into[key] += value
    if outcome.process is not None:
        pid, peak = outcome.process
        peaks[pid] = max(peak, peaks.get(pid, 0))
