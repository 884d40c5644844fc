"""`labeler serve` against a real Label Studio (1.23.2): predictions for imported tasks, and the
reviewers' annotations back in the store through the /webhook Label Studio registers itself.

The server comes from LABELER_TEST_LABEL_STUDIO (CI installs it in a venv of its own); without
the variable the test is skipped, naming it; with it, a server that does not start fails the test.

Label Studio sets a new project's model_version to the ML backend's title, not to the version
/setup answers, and both its score column and the predictions it shows are filtered by the
project's model_version; so the test connects the backend titled with its model version, as the
README tells users to.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from captionkit import tiny_checkpoint
from imagefactory import plain_image
from labelstudio_server import (
    LabelStudio,
    free_port,
    label_studio_executable,
    request,
    running_label_studio,
    stop,
    tail,
)
from sqlalchemy import select

from labeler.api import open_store
from labeler.store.models import Image, Review

CONFIG = ('<View><Image name="image" value="$image"/><TextArea name="caption" toName="image" '
          'editable="true" maxSubmissions="1"/></View>')  # fmt: skip
COLORS = [(220, 30, 30), (30, 30, 220), (30, 200, 60), (240, 220, 40), (20, 20, 20),
          (250, 250, 250)]  # fmt: skip
EDITED = "a hand-written caption of a coloured square"
EDITED_AGAIN = "a caption the reviewer changed once more"
KEY = "labeler-backend-key-0123"
WAIT_S = 30.0  # for the store to show what a webhook said


@pytest.fixture(scope="module")
def label_studio() -> Iterator[LabelStudio]:
    executable = label_studio_executable()  # skip when unset, fail when wrong
    with running_label_studio(executable) as server:
        yield server


@pytest.fixture
def images(label_studio) -> tuple[Path, list[str]]:
    """Six small distinct images in a fresh folder under the server's document root, and their
    paths relative to that root."""
    folder = label_studio.document_root / f"set-{uuid.uuid4().hex[:8]}"
    paths = [plain_image(folder / "img", f"sq_{i}.png", size=(24 + 4 * i, 20 + 2 * i), color=c)
             for i, c in enumerate(COLORS)]  # fmt: skip
    return folder, [p.relative_to(label_studio.document_root).as_posix() for p in paths]


@pytest.fixture
def backend(tmp_path, store_url, label_studio, images) -> Iterator[str]:
    """`labeler serve` on a scanned store, as a subprocess; yields its base URL."""
    with open_store(store_url) as store:
        store.scan("live", images[0])
    with serving(tmp_path, store_url, label_studio) as url:
        yield url


@contextlib.contextmanager
def serving(tmp_path: Path, db: str, ls: LabelStudio, *options: str) -> Iterator[str]:
    """`labeler serve` on `db` with a tiny model, downloads pointed at `ls`, until the block
    ends; its log is printed at the end (pytest shows it when the test fails)."""
    checkpoint = tiny_checkpoint(tmp_path / "model.pt")
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    command = [sys.executable, "-m", "labeler", "serve", "--model", str(checkpoint), "--db", db,
               "--document-root", str(ls.document_root), "--host", "127.0.0.1",
               "--port", str(port), *options]  # fmt: skip
    env = {**os.environ, "LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token}
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while request("GET", url + "/health", timeout=2)[0] == 0:  # any answer: it is up
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"labeler serve did not come up:\n{tail(log)}", pytrace=False)
            time.sleep(0.3)
        yield url
    finally:
        stop(process)
        print(f"--- labeler serve log ---\n{tail(log, 60)}")


def test_label_studio_gets_predictions_and_sends_reviews_back(label_studio, backend, images,
                                                             store_url):  # fmt: skip
    ls = label_studio
    folder, relative = images
    pid = _project(ls, folder)
    drafts = _retrieve(ls, pid, relative, _connect(ls, pid, backend))

    # Three reviewers' verdicts: the draft kept, a caption written instead, the task skipped.
    accepted, edited, skipped = sorted(drafts)[:3]
    verdicts = {
        accepted: ("accepted", {"result": _caption(drafts[accepted][1])}),
        edited: ("edited", {"result": _caption(EDITED), "lead_time": 4.2}),
        skipped: ("skipped", {"result": [], "was_cancelled": True}),
    }
    annotation = {
        task: ls.call("POST", f"/api/tasks/{task}/annotations", body, expect=201)["id"]
        for task, (_, body) in verdicts.items()
    }
    path = {task: drafts[task][0] for task in drafts}
    with open_store(store_url) as store:
        reviews = _reader(store, folder.relative_to(ls.document_root).as_posix() + "/")
        found = _eventually(reviews, lambda r: len(r) == 3, "three reviews in the store")
        by_path = {r["path"]: r for r in found}
        assert set(by_path) == {path[task] for task in verdicts}, found
        for task, (outcome, _) in verdicts.items():
            assert by_path[path[task]]["outcome"] == outcome, found
            assert by_path[path[task]]["reviewer"], found
        assert by_path[path[accepted]]["text"] in (None, drafts[accepted][1])
        assert by_path[path[edited]]["text"] == EDITED

        # The reviewer changes the edited caption: the review is replaced, not added to.
        ls.call("PATCH", f"/api/annotations/{annotation[edited]}",
                {"result": _caption(EDITED_AGAIN)})  # fmt: skip
        found = _eventually(reviews, lambda r: EDITED_AGAIN in {x["text"] for x in r},
                            "the edited review replaced")  # fmt: skip
        assert len(found) == 3, found
        (again,) = [r for r in found if r["path"] == path[edited]]
        assert (again["outcome"], again["text"]) == ("edited", EDITED_AGAIN)

        # An annotation deleted in Label Studio withdraws its review.
        ls.call("DELETE", f"/api/annotations/{annotation[accepted]}", expect=204)
        found = _eventually(reviews, lambda r: len(r) == 2, "the deleted annotation's review gone")
        assert {r["path"] for r in found} == {path[edited], path[skipped]}


def test_an_api_key_travels_as_basic_auth_and_as_the_webhooks_header(label_studio, images,
                                                                   tmp_path):  # fmt: skip
    """Label Studio can only send an ML backend HTTP Basic auth, and a webhook the headers set
    on it: with --api-key both reach the backend, and a connection without the key is refused."""
    ls = label_studio
    folder, relative = images
    db = str(tmp_path / "keyed.db")
    with open_store(db) as store:
        store.scan("live", folder)
    with serving(tmp_path, db, ls, "--api-key", KEY) as url:
        pid = _project(ls, folder)
        refused = ls.call("POST", "/api/ml", {"url": url, "project": pid}, expect=400)
        assert "authentication" in str(refused).lower(), refused
        version = _connect(ls, pid, url, key=KEY, auth_method="BASIC_AUTH",
                           basic_auth_user="label-studio", basic_auth_pass=KEY)  # fmt: skip
        (hook,) = ls.call("GET", f"/api/webhooks/?project={pid}")
        ls.call("PATCH", f"/api/webhooks/{hook['id']}/",
                {"headers": {"Authorization": f"Token {KEY}"}})  # fmt: skip
        drafts = _retrieve(ls, pid, relative[:2], version)
        task = min(drafts)
        ls.call("POST", f"/api/tasks/{task}/annotations", {"result": _caption(EDITED)}, expect=201)
        with open_store(db) as store:
            reviews = _reader(store, folder.relative_to(ls.document_root).as_posix() + "/")
            found = _eventually(reviews, lambda r: len(r) == 1, "the keyed webhook's review")
        assert (found[0]["path"], found[0]["outcome"]) == (drafts[task][0], "edited")


def _project(ls: LabelStudio, folder: Path) -> int:
    """A captioning project whose local-files storage serves `folder`: its id."""
    project = ls.call("POST", "/api/projects", {"title": "labeler live test",
                                                "label_config": CONFIG}, expect=201)  # fmt: skip
    ls.call("POST", "/api/storages/localfiles", {"project": project["id"], "path": str(folder),
            "use_blob_urls": True, "title": "images"}, expect=201)  # fmt: skip
    return project["id"]


def _connect(
    ls: LabelStudio, pid: int, backend: str, *, key: str | None = None, **auth: str
) -> str:
    """Connect the backend to the project as the README says, titled with the model version
    it prints (and /health gives): Label Studio makes the title the project's model version, so
    the score column shows this model's predictions. Returns that version."""
    status, health = request("GET", backend + "/health", token=key)
    assert status == 200, health
    version = health["model_version"]
    ml = ls.call("POST", "/api/ml", {"url": backend, "project": pid, "title": version, **auth},
                 expect=201)  # fmt: skip
    assert ml["state"] == "CO", ml
    assert ml["model_version"] == version, "/setup answered another model_version"
    assert ls.call("GET", f"/api/projects/{pid}")["model_version"] == version
    # Connecting registers <backend>/webhook for every event (send_payload on): nothing to add.
    hooks = ls.call("GET", f"/api/webhooks/?project={pid}")
    assert [h["url"] for h in hooks] == [backend + "/webhook"], hooks
    return ml["model_version"]


def _retrieve(
    ls: LabelStudio, pid: int, relative: list[str], version: str
) -> dict[int, tuple[str, str]]:
    """Import a task per image and ask the backend for every prediction: the drafts, as
    _predictions gives them."""
    tasks = [{"image": f"/data/local-files/?d={path}"} for path in relative]
    imported = ls.call("POST", f"/api/projects/{pid}/import", tasks, expect=201)
    assert imported["task_count"] == len(tasks)
    done = ls.call("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
                   {"selectedItems": {"all": True, "excluded": []}})  # fmt: skip
    assert done["processed_items"] == len(tasks)
    drafts = _predictions(ls, pid, version)
    assert sorted(path for path, _ in drafts.values()) == sorted(relative)
    return drafts


def _predictions(ls: LabelStudio, pid: int, version: str) -> dict[int, tuple[str, str]]:
    """Task id -> (image path under the document root, draft caption), after checking that
    each task holds one well-formed prediction of this version and the task list its score."""
    listed = ls.call("GET", f"/api/tasks?project={pid}&fields=all&page_size=100")["tasks"]
    drafts = {}
    for task in listed:
        assert len(task["predictions"]) == 1, (task, ls.log_tail())
        prediction = task["predictions"][0]
        assert prediction["model_version"] == version, prediction
        assert 0.0 <= prediction["score"] <= 1.0, prediction
        assert task["predictions_score"] == pytest.approx(prediction["score"])
        (result,) = prediction["result"]
        assert (result["from_name"], result["to_name"], result["type"]) == (
            "caption", "image", "textarea")  # fmt: skip
        (text,) = result["value"]["text"]
        assert text.strip(), prediction
        drafts[task["id"]] = (task["data"]["image"].split("?d=", 1)[1], text)
    return drafts


def _caption(text: str) -> list[dict[str, Any]]:
    return [{"from_name": "caption", "to_name": "image", "type": "textarea",
             "value": {"text": [text]}}]  # fmt: skip


def _reader(store: Any, root_prefix: str) -> Callable[[], list[dict[str, Any]]]:
    """The store's reviews, with each image's path relative to the document root."""

    def read() -> list[dict[str, Any]]:
        with store.store.session() as session:
            rows = session.execute(
                select(Image.path, Review.outcome, Review.text, Review.reviewer)
                .join(Image, Image.id == Review.image_id)
                .order_by(Review.id)
            ).all()  # fmt: skip
        return [{"path": root_prefix + p, "outcome": o, "text": t, "reviewer": r}
                for p, o, t, r in rows]  # fmt: skip

    return read


def _eventually(read: Callable[[], Any], ok: Callable[[Any], bool], what: str) -> Any:
    """`read()` once `ok` holds of it; a failure naming `what` and the last reading otherwise
    (the webhook is delivered inside Label Studio's request, the store write may follow)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        value = read()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not seen within {WAIT_S:.0f} s: {what}; last: {value!r}", pytrace=False)
        time.sleep(0.3)
