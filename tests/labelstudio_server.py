"""A real Label Studio server for the live tests: started from the executable that
LABELER_TEST_LABEL_STUDIO names (CI installs Label Studio in a virtual environment of its own,
since its pins clash with ours), on a free loopback port, with a fresh data folder, a known user
and a known legacy API token; stopped and removed at the end.

The environment is what a team would set to run Label Studio next to `labeler serve` on one
machine: local files served from a document root, and loopback addresses allowed both for the ML
backend (ML_BLOCK_LOCAL_IP) and for webhooks (SSRF_PROTECTION_ENABLED: without it Label Studio
silently skips the /webhook it registers for a new ML backend). A fresh data folder means every
migration runs: startup takes about a minute, so callers share one server per module.

A module of its own, talking HTTP through the standard library only, so that test files import it
and so that it needs nothing Label Studio's environment or ours may lack.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

LABEL_STUDIO_ENV = "LABELER_TEST_LABEL_STUDIO"
USER = "reviewer@example.com"
PASSWORD = "labeler-test-password"
TOKEN = "labelertest0123456789abcdef0123456789ab"  # a legacy token: 'Authorization: Token ...'
STARTUP_S = 300.0  # every migration on a fresh SQLite file; about a minute on two busy cores


class LabelStudioError(RuntimeError):
    """Label Studio did not start, or answered a call with an unexpected status."""


@dataclass(frozen=True)
class LabelStudio:
    """A running server: where it answers, its token, and the folder it serves local files from."""

    url: str
    token: str
    document_root: Path
    log: Path

    def call(self, method: str, path: str, body: Any = None, *, expect: int = 200) -> Any:
        """The JSON answer to one API call (None when empty); LabelStudioError on any other
        status than `expect`, with the server's answer in the message."""
        status, answer = request(method, self.url + path, body, token=self.token)
        if status != expect:
            raise LabelStudioError(f"{method} {path}: {status}, not {expect}: {answer!r:.2000}")
        return answer

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log, lines)


def label_studio_executable() -> str:
    """The executable LABELER_TEST_LABEL_STUDIO names; a skip naming the variable when it is
    unset (a developer's machine), a failure when it names nothing runnable (CI set it)."""
    named = os.environ.get(LABEL_STUDIO_ENV, "").strip()
    if not named:
        pytest.skip(f"{LABEL_STUDIO_ENV} is not set: set it to a label-studio executable "
                    "(label-studio==1.23.2 in its own venv) to run the live test")  # fmt: skip
    found = shutil.which(named)
    if found is None:
        pytest.fail(f"{LABEL_STUDIO_ENV}={named!r} is not an executable", pytrace=False)
    return found


@contextlib.contextmanager
def running_label_studio(executable: str, *, startup_s: float = STARTUP_S) -> Iterator[LabelStudio]:
    """Start Label Studio, wait until it answers as our user, yield it; stop it and delete its
    folder however the block ends. LabelStudioError (with the log's tail) when it does not start."""
    work = Path(tempfile.mkdtemp(prefix="labeler-ls-"))
    root = work / "files"
    root.mkdir()
    log = work / "label-studio.log"
    port = free_port()
    command = [executable, "start", "--no-browser", "--internal-host", "127.0.0.1",
               "--port", str(port), "--data-dir", str(work / "data"),
               "--enable-legacy-api-token"]  # fmt: skip
    server = LabelStudio(f"http://127.0.0.1:{port}", TOKEN, root, log)
    try:
        with open(log, "wb") as out:
            process = subprocess.Popen(command, env=_environment(work, root), stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)  # fmt: skip
        try:
            _wait_until_up(process, server, startup_s)
            yield server
        finally:
            stop(process)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _environment(work: Path, root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
    env.update({
        "HOME": str(work / "home"),  # nothing of the user's, nothing left behind
        "LABEL_STUDIO_BASE_DATA_DIR": str(work / "data"),
        "DJANGO_DB": "sqlite",
        "LABEL_STUDIO_USERNAME": USER,
        "LABEL_STUDIO_PASSWORD": PASSWORD,
        "LABEL_STUDIO_USER_TOKEN": TOKEN,
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root),
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "COLLECT_ANALYTICS": "false",
        "LATEST_VERSION_CHECK": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
    })  # fmt: skip
    return env


def _wait_until_up(process: subprocess.Popen, server: LabelStudio, startup_s: float) -> None:
    """Until the server answers /health and knows our token. Label Studio moves to the next
    port when its port is taken, so a server on ours that does not know the token is not ours."""
    deadline = time.monotonic() + startup_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LabelStudioError(f"label-studio exited with {process.returncode} while starting:"
                                   f"\n{tail(server.log)}")  # fmt: skip
        status, _ = request("GET", server.url + "/health", timeout=2)
        if status == 200:
            status, user = request("GET", server.url + "/api/current-user/whoami",
                                   token=server.token, timeout=10)  # fmt: skip
            if status == 200 and isinstance(user, dict) and user.get("email") == USER:
                return
            raise LabelStudioError(f"{server.url} answers, but not as our user ({status}: "
                                   f"{user!r:.300}):\n{tail(server.log)}")  # fmt: skip
        time.sleep(1.0)
    raise LabelStudioError(f"label-studio gave no answer in {startup_s:.0f} s:\n{tail(server.log)}")


def request(
    method: str, url: str, body: Any = None, *, token: str | None = None, timeout: float = 120
) -> tuple[int, Any]:
    """(status, JSON answer or text or None); status 0 when nothing answered."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    if token is not None:
        headers["Authorization"] = f"Token {token}"
    call = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(call, timeout=timeout) as response:
            return response.status, _decoded(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _decoded(exc.read())
    except (urllib.error.URLError, OSError):
        return 0, None


def _decoded(raw: bytes) -> Any:
    if not raw:
        return None
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def free_port() -> int:
    """A loopback port nothing listens on now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop(process: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `grace_s`: this one process, started by us."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])
