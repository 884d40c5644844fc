"""The worker pools the scan and the caption job read files in, and the export's reader process.

Processes start through a fork server (spawn where there is none): the parent may be running a
progress thread, and forking a threaded process can copy a lock held by another thread into the
child. Workers ignore SIGINT, so Ctrl-C reaches only the main process, which stops between
batches. A worker whose parent is gone (killed with SIGKILL, so it never shut its pool down)
exits at once instead of waiting forever for tasks with its memory held. `workers=0`
runs every task inline in the calling process: for debugging, for tiny jobs, and for
environments where new processes cannot start.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor


class InlineExecutor(Executor):
    """Runs each task at submit time; its future is already done."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to whoever waits on the future
            future.set_exception(exc)
        return future


def _exit_with_parent() -> None:
    """Exit as soon as the process that started this one is gone. Its sentinel (a pipe whose
    write end only that process holds) reads as closed then; the process's own parent is no
    guide, since a fork server stays alive while any process it forked holds its pipe."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _ignore_sigint(then: Callable[[], None] | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    if then is not None:
        then()


def process_context(preload: Sequence[str] = ()):  # type: ignore[no-untyped-def]
    """The multiprocessing context new processes start from: a fork server preloading these
    modules, or spawn where there is none. (A fork server already running keeps its preload.)"""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver" and preload:
        context.set_forkserver_preload(list(preload))
    return context


def worker_pool(
    workers: int, *, preload: Sequence[str] = (), initializer: Callable[[], None] | None = None
) -> Executor:
    """`workers` processes (preloading these modules), or inline work when `workers` is 0."""
    if workers == 0:
        return InlineExecutor()
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=process_context(preload), initializer=_ignore_sigint,
        initargs=(initializer,),
    )  # fmt: skip
