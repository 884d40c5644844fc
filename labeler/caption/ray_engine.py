"""The caption job's model on a Ray cluster (`labeler caption --engine ray`): one copy of the model
per Ray actor, one actor per GPU when the cluster has GPUs, else one per CPU; each actor decodes
its batches by path (the images on storage every node sees) and captions them.

The engine is a third engine behind the caption job's protocol (engines.py): `submit(tasks)`
hands a claimed batch to the actor with the fewest batches, `result()` waits for its `Outcome`,
and everything else stays the job's, on the driver: selecting and claiming the images (leases,
heartbeat, dead workers' claims freed), writing drafts, failures and releases in one transaction
per batch through the same store functions, p_accept scoring, the run record and the summary.
So a run stopped at any point loses only the batches in flight, whose claims the next run frees
(a driver killed on this host at once, elsewhere at the end of its lease, or when PostgreSQL sees
its session end), and nothing is written twice. A lost actor (its process killed, its node gone)
is Ray's to handle: the actor is started again, its model reloaded, and its batches retried
(`RESTARTS`), in the order they were given.

Why actors and not Ray Data. The issue named Ray Data (`map_batches` over an actor pool). But a Ray
Data pipeline wants its input up front, while the job claims its work a batch at a time, so that
several drivers can share one store and Ctrl-C gives back what was not started; and Ray Data starts
a new actor pool, and so loads the model again, for every dataset, that is for every window of
claimed work. Measured on this project's two-core machine (benchmarks/bench_caption.py `--ray`, 256
JPEGs of 1600x1200, mobilenet, batch 32, windows of 64): Ray Data ran at 4.6 images/s fed a dataset
per window, each new dataset costing 12.6 s (its actor pool starting and loading the model), and at
14.7 images/s as one dataset over every image (start-up included), where these actors ran at 19.5
(start-up excluded) and the local engine at 31.7. Plain actors load the model once per run, take
the batches the job claims as it claims them, keep their order, and a batch queued behind another
can be cancelled unstarted (`stop`), which the job needs to give claims back; Ray Data's own gains
(spilling, autoscaling a pool, splitting decode and model across the cluster) matter for a dataset
read from object storage, not for a job that holds a handful of small batches of paths.

Each actor takes `PER_ACTOR` batches, one in the model and the next queued at the actor, so an
actor never waits for the driver between batches. On a CPU an actor holds its share of the cores,
one torch thread per core, and decodes inline, as the local engine's model processes do
(engines.py says why that beats one process on many threads); an actor given a GPU holds one CPU
and decodes inline too (loader processes beside a GPU actor are not done yet).

An actor whose first batch holds no file it can open (missing, permission denied: not a corrupt
image, which is a recorded failure as always) fails the run at once, naming the first path and
the node: the images are not on storage that node sees. One file of the batch that opens is
enough to pass, so an image deleted since the scan stays a recorded failure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labeler.caption import engines
from labeler.errors import InputError, LabelerError, ModelError
from labeler.files import decode

INSTALL = "--engine ray needs the ray extra: pip install 'labeler[ray]'"
PER_ACTOR = 2  # batches given to an actor at once: one in its model, the next waiting there
RESTARTS = 3  # a lost actor is started again (and its batches retried) at most this often
CONNECT_TIMEOUT_S = 10.0  # to reach a cluster's address
READY_TIMEOUT_S = 600.0  # the longest the actors may take to start and load the model


@dataclass(frozen=True)
class RayOptions:
    """How `--engine ray` runs: the cluster, how many actors, and on what."""

    address: str | None = None  # None: $RAY_ADDRESS, else a local Ray on this machine
    actors: int | None = None  # None: one per GPU of the cluster, else one per CPU
    device: str = "auto"  # auto: GPUs when the cluster has them; cpu; cuda


@dataclass(frozen=True)
class Unreachable:
    """An actor's first batch held no file it could open: the first path, why, and where."""

    path: bytes
    reason: str
    host: str


def import_ray():  # type: ignore[no-untyped-def]
    """The ray module, or InputError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise InputError(INSTALL) from None
    return ray


def options_for(engine: str, *, address: str | None = None, actors: int | None = None,
                device: str = "auto") -> RayOptions | None:  # fmt: skip
    """RayOptions for `--engine ray` (ray found installed first), None for the local engine;
    InputError for Ray's options without it."""
    if engine not in ("local", "ray"):
        raise InputError(f"--engine must be local or ray, not {engine!r}")
    if engine == "local":
        if address is not None or actors is not None:
            raise InputError("--ray-address and --ray-actors need --engine ray")
        return None
    import_ray()
    return RayOptions(address=address, actors=actors, device=device)


def check(captioner, options: RayOptions) -> None:  # type: ignore[no-untyped-def]
    """InputError for a Ray run that cannot start, before the run is recorded."""
    from labeler.model.captioner import ShowTellCaptioner, ShowTellFile

    import_ray()
    if options.actors is not None and options.actors < 1:
        raise InputError("--ray-actors must be at least 1")
    if options.device != "auto" and options.device.split(":")[0] not in ("cpu", "cuda"):
        raise InputError("--engine ray runs on cpu or cuda (auto: GPUs when the cluster has them)")
    if type(captioner) not in (ShowTellCaptioner, ShowTellFile) or captioner.source is None:
        raise InputError("--engine ray needs a Show and Tell checkpoint file")


def _unreachable(tasks: Sequence[Sequence[bytes]]) -> Unreachable | None:
    """None when some path of these tasks opens here, else the first and why it did not."""
    first: tuple[bytes, str] | None = None
    for paths in tasks:
        for path in paths:
            try:
                fd, _ = decode.open_regular(path)
            except decode.ImageDecodeError as exc:
                first = first or (path, exc.reason)
                continue
            os.close(fd)
            return None
    return None if first is None else Unreachable(first[0], first[1], socket.gethostname())


class _Actor:
    """In a Ray worker: one copy of the model (engines.caption_batch loads it once per process
    and checks its hash), decoding and captioning whole batches."""

    def __init__(self, spec: engines.ModelSpec) -> None:
        self.spec = spec
        self.checked = False  # the first batch showed that this node sees the images

    def load(self) -> str:
        engines.caption_batch(self.spec, [], None)  # loads the model, captions nothing
        return socket.gethostname()

    def caption(self, tasks: Sequence[Sequence[bytes]], settings) -> Any:  # type: ignore[no-untyped-def]
        if not self.checked:
            unreachable = _unreachable(tasks)
            if unreachable is not None:
                return unreachable
            self.checked = bool(tasks)
        return engines.caption_batch(self.spec, tasks, settings)


def _plan(options: RayOptions, cpus: float, gpus: float) -> tuple[str, int, dict[str, float]]:
    """The device, how many actors, and the resources each asks for, from the cluster's."""
    device = options.device
    if device == "auto":
        device = "cuda" if gpus >= 1 else "cpu"
    if device.startswith("cuda"):
        if gpus <= 0:
            raise InputError(f"--device {device}: the Ray cluster has no GPU")
        actors = options.actors or int(gpus)
        # Ray shows an actor only the GPUs it gave it, as cuda:0: so no index here
        return "cuda", actors, {"num_gpus": _share(gpus, actors), "num_cpus": 1}
    actors = options.actors or max(1, int(cpus))
    return "cpu", actors, {"num_cpus": _share(cpus, actors)}


def _share(total: float, actors: int) -> float:
    """Each actor's share of a resource: whole when at least one, else a fraction (Ray takes
    fractions below 1 only)."""
    share = total / actors
    return float(int(share)) if share >= 1 else max(0.0001, int(share * 10_000) / 10_000)


class _RayJob:
    def __init__(self, engine: RayEngine, actor: int, ref: Any) -> None:
        self.engine = engine
        self.actor = actor
        self.ref = ref
        self.outcome: engines.Outcome | None = None

    def cancel(self) -> bool:
        """False: the batch went to an actor at once; stop() cancels those still queued there,
        and they come back skipped."""
        return False

    def result(self) -> engines.Outcome:
        if self.outcome is None:
            self.outcome = self.engine.collect(self)
        return self.outcome


class RayEngine:
    """Actors on a Ray cluster, each with its own copy of the model; `PER_ACTOR` batches each.
    Connects to the cluster (or starts a local one, shut down at the end) as it starts."""

    def __init__(self, captioner, settings, options: RayOptions, *,
                 max_pixels: int = decode.DEFAULT_MAX_PIXELS) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
        self.source = str(Path(captioner.source).resolve())
        self.identity = captioner.identity
        self.settings = settings
        self.options = options
        self.max_pixels = max_pixels
        self.models = self.depth = 0  # set as it starts, from the cluster
        self.describe: dict[str, Any] = {"engine": "ray"}
        self._ray: Any = None
        self._owned = False  # this engine started Ray (locally) and shuts it down
        self._actors: list[Any] = []
        self._queued: list[list[_RayJob]] = []  # per actor, its batches not yet collected
        self._stopped = False

    def __enter__(self) -> RayEngine:
        """Connect, start the actors and wait until each has loaded the model (`start_s`): a
        model that cannot be loaded on a node fails here, before any image is claimed."""
        started = time.perf_counter()
        self._ray = ray = import_ray()
        self._connect()
        try:
            resources = ray.cluster_resources()
            device, count, each = _plan(self.options, resources.get("CPU", 0.0),
                                        resources.get("GPU", 0.0))  # fmt: skip
            threads = max(1, int(each["num_cpus"]))
            cuda = device.startswith("cuda")
            spec = engines.ModelSpec(
                self.source, self.identity, threads, cuda, self.max_pixels, device
            )
            actor = ray.remote(_Actor).options(
                max_restarts=RESTARTS, max_task_retries=RESTARTS, **each
            )
            self._actors = [actor.remote(spec) for _ in range(count)]
            self._queued = [[] for _ in self._actors]
            hosts = self._get([a.load.remote() for a in self._actors], READY_TIMEOUT_S)
        except BaseException:
            self._close()
            raise
        self.models, self.depth = count, count * PER_ACTOR
        self.describe.update(
            {"actors": count, "device": device, "threads_each": spec.threads,
             **{f"{k.removeprefix('num_')}_each": v for k, v in each.items()},
             "nodes": len(set(hosts)), "address": self._address(),
             "start_s": round(time.perf_counter() - started, 3)}
        )  # fmt: skip
        return self

    def _connect(self) -> None:
        ray = self._ray
        address = self.options.address
        _check_reachable(address or os.environ.get("RAY_ADDRESS"))
        if ray.is_initialized():  # a caller's own session (the Python API, tests)
            return
        local = address is None and not os.environ.get("RAY_ADDRESS")
        # A local Ray is this run's alone: no dashboard, and actors at the driver's priority
        # (Ray starts its workers at niceness 15, so on a busy machine anything else, the
        # driver included, takes the cores from the model first).
        extra = {"include_dashboard": False, "_system_config": {"worker_niceness": 0}}
        extra = extra if local else {}
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
                     configure_logging=False, **extra)  # fmt: skip
        except Exception as exc:
            where = address or os.environ.get("RAY_ADDRESS") or "this machine"
            raise InputError(f"cannot start Ray on {where}: {_first_line(exc)}") from None
        self._owned = True

    def _address(self) -> str:
        try:
            return str(self._ray.get_runtime_context().gcs_address)
        except Exception:  # older Ray: the address is a detail of the summary
            return ""

    def __exit__(self, *exc: object) -> None:
        self._close()

    def _close(self) -> None:
        """Stop the actors now (a batch still running is thrown away; its claims are given
        back by the job), and a Ray this engine started."""
        for actor in self._actors:
            with contextlib.suppress(Exception):  # already gone with its node
                self._ray.kill(actor, no_restart=True)
        self._actors = []
        if self._owned:
            self._ray.shutdown()
            self._owned = False

    def submit(self, tasks: Sequence[Sequence[bytes]]) -> _RayJob:
        assert self._actors, "use the engine as a context manager"
        index = min(range(len(self._actors)), key=lambda i: len(self._queued[i]))
        tasks = [tuple(paths) for paths in tasks]
        job = _RayJob(self, index, self._actors[index].caption.remote(tasks, self.settings))
        if self._stopped:  # nothing submitted after stop() runs
            self._ray.cancel(job.ref)
        self._queued[index].append(job)
        return job

    def stop(self) -> None:
        """Cancel the batches queued at an actor behind the one it runs: they come back skipped
        (one that began meanwhile is thrown away, and its claims given back all the same)."""
        self._stopped = True
        for queued in self._queued:
            for job in queued[1:]:
                self._ray.cancel(job.ref)

    def collect(self, job: _RayJob) -> engines.Outcome:
        """The job's outcome; a Ray error becomes the library error it stands for."""
        try:
            got = self._get(job.ref, None)
        except _Cancelled:
            return engines.SKIPPED
        finally:
            self._queued[job.actor].remove(job)
        if isinstance(got, Unreachable):
            raise InputError(
                f"a Ray worker on {got.host} cannot open {os.fsdecode(got.path)} ({got.reason}), "
                "the first image it was given: the images must be on storage every node sees, "
                "at the same path (a file deleted since: run labeler scan again)"
            )
        return got

    def _get(self, refs: Any, timeout: float | None) -> Any:
        from ray import exceptions

        try:
            return self._ray.get(refs, timeout=timeout)
        except exceptions.TaskCancelledError:
            raise _Cancelled from None
        except exceptions.GetTimeoutError:
            raise ModelError(
                f"the Ray actors did not all start and load {self.source} within {timeout:.0f} s "
                "(does the cluster have room for them?)"
            ) from None
        except exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, LabelerError):
                raise cause from None
            raise ModelError(f"a Ray actor failed: {_first_line(cause or exc)}") from None
        except exceptions.RayActorError as exc:
            raise ModelError(f"a Ray actor was lost (restarted at most {RESTARTS} times): "
                             f"{_first_line(exc)}") from None  # fmt: skip


def _check_reachable(address: str | None) -> None:
    """InputError unless a cluster's `host:port` takes a connection: ray.init would retry an
    unreachable one for minutes, deaf to SIGTERM. Other forms (auto, ray://) are Ray's."""
    if not address or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot reach the Ray cluster at {address}: {exc}") from None


class _Cancelled(Exception):
    """A batch cancelled before an actor ran it."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
