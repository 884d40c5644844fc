"""Run a function as the unprivileged user nobody (uid/gid 65534), for the permission tests:
the tests run as root, which ignores file permissions, so a real "permission denied" needs a
forked child that drops root. The child never returns into pytest."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

NOBODY = 65534


def run_as_nobody(cwd: Path, fn: Callable[[], Any]) -> Any:
    """fn()'s result (it must pickle), computed in a forked child that dropped to nobody with
    `cwd` as its working directory; the child's failure fails the test with its reason."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            os.chdir(cwd)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write_end, pickle.dumps(fn()))
            code = 0
        except BaseException as exc:  # tell the parent why
            os.write(2, f"child failed: {exc!r}\n".encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0 and payload, "the unprivileged child failed"
    return pickle.loads(payload)
