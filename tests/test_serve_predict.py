"""`labeler serve`'s /predict and /webhook through an HTTP client, with a real checkpoint, real
images and a real store (SQLite, and PostgreSQL when CI names a server): tasks in, drafts and
scores out and stored like the caption job's; annotation events in, reviews stored."""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from captionkit import CALIBRATOR, tiny_checkpoint
from imagefactory import noisy_image, plain_image, text_as_jpg
from sqlalchemy import func, select
from starlette.testclient import TestClient

from labeler.caption.job import caption_images
from labeler.files.scan import scan
from labeler.formats.labelstudio import LABEL_CONFIG, LOCAL_FILES
from labeler.model.captioner import ShowTellCaptioner
from labeler.model.drafts import DecodeSettings
from labeler.review.backend import BackendSettings, make_app
from labeler.review.predictor import Predictor
from labeler.review.task_images import Sources
from labeler.store.models import Caption, Dataset, Image, Review


@pytest.fixture
def root(tmp_path) -> Path:
    folder = tmp_path / "docroot"
    (folder / "photos").mkdir(parents=True)
    for i in range(3):
        noisy_image(folder / "photos", f"p{i}.jpg", seed=i)
    shutil.copy(folder / "photos" / "p0.jpg", folder / "photos" / "copy_of_p0.jpg")
    text_as_jpg(folder / "photos", "broken.jpg")
    return Path(os.path.realpath(folder))


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    return tiny_checkpoint(tmp_path / "model.pt", calibrator=CALIBRATOR)


class Served:
    def __init__(self, store, checkpoint, root, tmp_path, within=None, **sources) -> None:
        self.captioner = ShowTellCaptioner.from_checkpoint(checkpoint, device="cpu")
        self.settings = self.captioner.decoding or DecodeSettings()
        places = Sources(document_root=root, download_dir=tmp_path / "downloads", **sources)
        self.predictor = Predictor(store, self.captioner, self.settings, places, procs=0,
                                   answer_within_s=within)  # fmt: skip
        self.store = store

    def __enter__(self) -> Served:
        self.predictor.__enter__()
        app = make_app(BackendSettings(self.predictor.model_version), self.predictor)
        self.client = TestClient(app)
        return self

    def __exit__(self, *exc: object) -> None:
        self.predictor.__exit__(*exc)

    def predict(self, urls: list[str], config: str = LABEL_CONFIG) -> list:
        tasks = [{"id": i + 1, "data": {"image": url}} for i, url in enumerate(urls)]
        body = {"tasks": tasks, "project": "1.1700000000", "label_config": config, "params": {}}
        response = self.client.post("/predict", json=body)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert len(results) == len(tasks)
        return results


def _local(rel: str) -> str:
    return LOCAL_FILES + rel


def _text(result: dict) -> str:
    return result["result"][0]["value"]["text"][0]


def test_predict_drafts_scores_and_stores_each_task_in_order(
    store, checkpoint, root, tmp_path, caplog
):
    urls = [
        _local("photos/p1.jpg"),
        _local("photos/broken.jpg"),
        _local("photos/p0.jpg"),
        _local("../outside.jpg"),
        _local("photos/nothing-here.jpg"),
        _local("photos/copy_of_p0.jpg"),
        "ftp://example.com/x.jpg",
    ]
    plain_image(root.parent, "outside.jpg")
    with Served(store, checkpoint, root, tmp_path) as served:
        results = served.predict(urls)
        version = served.predictor.model_version
    good = [0, 2, 5]
    assert [i for i, r in enumerate(results) if r] == good
    for i in good:
        prediction = results[i]
        assert prediction["model_version"] == version
        assert 0.0 <= prediction["score"] <= 1.0
        assert prediction["result"][0]["from_name"] == "caption"
        assert prediction["result"][0]["to_name"] == "image"
        assert prediction["result"][0]["type"] == "textarea"
        assert _text(prediction)
    assert _text(results[2]) == _text(results[5])  # one content, one draft
    for reason in (
        "outside the document root",
        "no such file",
        "not a Label Studio or web URL",
        "broken.jpg",
    ):
        assert reason in caplog.text
    with store.session() as session:
        datasets = session.execute(select(Dataset.name, Dataset.root)).all()
        assert datasets == [("label-studio", str(root))]
        images = dict(session.execute(select(Image.path, Image.status)).all())
        assert images == {
            "photos/p1.jpg": "ok",
            "photos/p0.jpg": "ok",
            "photos/copy_of_p0.jpg": "ok",
            "photos/broken.jpg": "unsupported",
        }
    best, scores = _best_drafts(store, Caption.text), _best_drafts(store, Caption.p_accept)
    assert best == {
        "photos/p1.jpg": _text(results[0]),
        "photos/p0.jpg": _text(results[2]),
        "photos/copy_of_p0.jpg": _text(results[5]),
    }
    assert scores["photos/p1.jpg"] == pytest.approx(results[0]["score"])


def _best_drafts(store, column) -> dict:
    """Image path -> `column` of its best draft."""
    with store.session() as session:
        query = select(Image.path, column).join(Caption, Caption.image_id == Image.id)
        return dict(session.execute(query.where(Caption.rank == 0)).all())


def test_drafts_the_caption_job_made_are_served_without_the_model(
    store, checkpoint, root, tmp_path
):
    scan(store, [root / "photos"], dataset="mine", workers=0)
    captioner = ShowTellCaptioner.from_checkpoint(checkpoint, device="cpu")
    settings = captioner.decoding or DecodeSettings()
    caption_images(store, captioner, settings=settings, procs=0, workers=0)
    made = _best_drafts(store, Caption.text)
    with store.session() as session:
        drafts = session.scalar(select(func.count()).select_from(Caption))
    with Served(store, checkpoint, root, tmp_path) as served:
        results = served.predict([_local("photos/p0.jpg"), _local("photos/p2.jpg")])
        assert served.predictor.counts["captioned"] == 0
    assert [_text(r) for r in results] == [made["p0.jpg"], made["p2.jpg"]]
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(Caption)) == drafts
        names = session.scalars(select(Dataset.name)).all()
    assert names == ["mine"]  # the images were found in the scanned dataset, not registered anew


def test_a_second_predict_reuses_the_stored_drafts(store, checkpoint, root, tmp_path):
    with Served(store, checkpoint, root, tmp_path) as served:
        first = served.predict([_local("photos/p1.jpg"), _local("photos/p2.jpg")])
        captioned = served.predictor.counts["captioned"]
        second = served.predict([_local("photos/p2.jpg"), _local("photos/p1.jpg")])
        assert served.predictor.counts["captioned"] == captioned == 2
    assert [_text(r) for r in second] == [_text(first[1]), _text(first[0])]
    assert [r["score"] for r in second] == [first[1]["score"], first[0]["score"]]


def test_what_is_not_drafted_in_time_is_answered_empty_and_stored_for_the_next_request(
    store, checkpoint, root, tmp_path, caplog
):
    urls = [_local("photos/p0.jpg"), _local("photos/p1.jpg"), _local("photos/p2.jpg")]
    with Served(store, checkpoint, root, tmp_path, within=0.0) as served:
        assert served.predict(urls) == [[], [], []]  # answered at once, the model still going
        assert "still being captioned" in caplog.text
        served.predict(urls)  # asked again meanwhile: not drafted a second time
        deadline = time.monotonic() + 60
        while served.predictor.counts["captioned"] < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert served.predictor.counts["captioned"] == 3
        again = served.predict(urls)
        assert served.predictor.counts["captioned"] == 3  # from the store, not the model
        assert served.predictor.counts["model_contents"] == 3
    stored = _best_drafts(store, Caption.text)
    assert [_text(r) for r in again] == [stored[f"photos/p{i}.jpg"] for i in range(3)]


def test_a_symbolic_link_out_of_the_document_root_is_refused(
    store, checkpoint, root, tmp_path, caplog
):
    secret = noisy_image(tmp_path, "secret.jpg", seed=9)
    (root / "photos" / "link.jpg").symlink_to(secret)
    with Served(store, checkpoint, root, tmp_path) as served:
        assert served.predict([_local("photos/link.jpg")]) == [[]]
    assert "outside the document root" in caplog.text
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 0


def test_the_config_names_go_into_the_result(store, checkpoint, root, tmp_path):
    config = (
        '<View><Image name="pic" value="$url"/><Text name="t" value="$x"/>'
        '<TextArea name="words" toName="pic"/></View>'
    )
    with Served(store, checkpoint, root, tmp_path) as served:
        body = {
            "tasks": [{"id": 7, "data": {"url": _local("photos/p1.jpg")}}],
            "label_config": config,
        }
        result = served.client.post("/predict", json=body).json()["results"][0]
    assert result["result"][0]["from_name"] == "words"
    assert result["result"][0]["to_name"] == "pic"


def test_predict_with_a_config_lacking_a_textarea_is_a_400(store, checkpoint, root, tmp_path):
    with Served(store, checkpoint, root, tmp_path) as served:
        body = {"tasks": [], "label_config": '<View><Image name="i" value="$image"/></View>'}
        response = served.client.post("/predict", json=body)
    assert response.status_code == 400
    assert "TextArea" in response.json()["error"]


class _Files(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; answers 401 without the right token, as Label Studio does; presigns a
    cloud URI as Label Studio does, with a redirect to a URL whose query is the credential
    (served here too, standing in for the bucket, which refuses any Authorization header)."""

    token = "ls-key"
    seen: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802
        _Files.seen.append(self.headers.get("Authorization"))
        given = self.headers.get("Authorization")
        if self.path.startswith(("/data/", "/api/")) and given != f"Token {self.token}":
            self.send_error(401)
            return
        if self.path == "/api/users/4/":  # Label Studio's user API
            body = json.dumps({"id": 4, "email": "ana@example.com"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path.startswith("/tasks/"):  # /tasks/<id>/presign/?fileuri=<base64 of s3://...>
            if given != f"Token {self.token}":
                self.send_error(401)
                return
            uri = base64.urlsafe_b64decode(self.path.split("fileuri=", 1)[1]).decode()
            self.send_response(303)
            bucket = f"http://localhost:{self.server.server_address[1]}/bucket/"  # its own origin
            self.send_header("Location", bucket + uri.split("/", 3)[3] + "?X-Amz-Signature=s")
            self.end_headers()
            return
        if self.path.startswith(("/data/moved/", "/data/to-ftp/")):  # a server moving a file
            # another origin (the same server by another name): the key must not follow
            target = f"http://localhost:{self.server.server_address[1]}/other/abc-photo.jpg"
            ftp = "ftp://127.0.0.1/abc-photo.jpg"
            self.send_response(302)
            self.send_header("Location", ftp if "to-ftp" in self.path else target)
            self.end_headers()
            return
        if self.path.startswith("/img?n="):  # one script, an image per query
            body = self.server.images[int(self.path[-1])]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path.startswith(("/bucket/", "/other/")) and given is not None:
            self.send_error(400, "a presigned URL takes no Authorization header")
            return
        self.path = self.path.removeprefix("/data").split("?")[0]
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def file_server(tmp_path):
    served = tmp_path / "served"
    (served / "upload" / "3").mkdir(parents=True)
    noisy_image(served / "upload" / "3", "abc-photo.jpg", seed=5)
    (served / "bucket" / "shots").mkdir(parents=True)
    noisy_image(served / "bucket" / "shots", "s3-photo.jpg", seed=6)
    (served / "other").mkdir()
    noisy_image(served / "other", "abc-photo.jpg", seed=7)
    handler = lambda *a, **k: _Files(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.images = {
        n: noisy_image(tmp_path, f"q{n}.jpg", seed=20 + n).read_bytes() for n in (1, 2)
    }
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Files.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_uploaded_images_are_downloaded_with_the_key_and_registered(
    store, checkpoint, root, tmp_path, file_server
):
    with Served(
        store, checkpoint, root, tmp_path, label_studio_url=file_server, api_key="ls-key"
    ) as served:
        results = served.predict(
            ["/data/upload/3/abc-photo.jpg", f"{file_server}/upload/3/abc-photo.jpg"]
        )
    assert results[0] and results[1] and _text(results[0]) == _text(results[1])
    assert _Files.seen == ["Token ls-key", "Token ls-key"]  # its own origin: the key goes too
    host = file_server.removeprefix("http://")
    kept = tmp_path / "downloads" / "label-studio" / host / "data" / "upload" / "3"
    assert (kept / "abc-photo.jpg").is_file()
    with store.session() as session:
        rows = session.execute(select(Dataset.name, Image.path).join(Image)).all()
    assert sorted(rows) == [  # one folder per source: a web server's paths never meet its own
        ("label-studio-downloads", f"label-studio/{host}/data/upload/3/abc-photo.jpg"),
        ("label-studio-downloads", f"web/{host}/upload/3/abc-photo.jpg"),
    ]


def test_a_cloud_uri_is_presigned_by_label_studio_and_fetched_without_the_key(
    store, checkpoint, root, tmp_path, file_server
):
    with Served(store, checkpoint, root, tmp_path, label_studio_url=file_server,
                api_key="ls-key") as served:  # fmt: skip
        (result,) = served.predict(["s3://my-bucket/shots/s3-photo.jpg"])
    assert result and _text(result)
    assert _Files.seen == ["Token ls-key", None]  # the presign call, then the bucket, bare
    kept = tmp_path / "downloads" / "cloud" / "s3" / "my-bucket" / "shots" / "s3-photo.jpg"
    assert kept.is_file()


def test_a_redirect_away_from_label_studio_leaves_the_key_behind(
    store, checkpoint, root, tmp_path, file_server
):
    with Served(store, checkpoint, root, tmp_path, label_studio_url=file_server,
                api_key="ls-key") as served:  # fmt: skip
        (moved,) = served.predict(["/data/moved/abc-photo.jpg"])  # Label Studio: 302 elsewhere
        (ftp,) = served.predict(["/data/to-ftp/abc-photo.jpg"])  # 302 to ftp://: not followed
    assert moved and _text(moved)
    assert _Files.seen[:2] == ["Token ls-key", None]  # the other server got no key
    assert ftp == []


def test_two_urls_differing_in_their_query_are_two_images(store, checkpoint, root, tmp_path,
                                                          file_server):  # fmt: skip
    with Served(store, checkpoint, root, tmp_path) as served:
        served.predict([f"{file_server}/img?n=1", f"{file_server}/img?n=2"])
    with store.session() as session:
        sizes = session.scalars(select(Image.content_hash)).all()
    assert len(sizes) == 2 and len(set(sizes)) == 2


def test_a_task_that_cannot_even_be_looked_at_fails_alone(store, checkpoint, root, tmp_path,
                                                          caplog):  # fmt: skip
    too_long = "photos/" + "a" * 300 + ".jpg"
    with Served(store, checkpoint, root, tmp_path) as served:
        results = served.predict([_local(too_long), _local("photos/p1.jpg")])
    assert results[0] == [] and results[1]
    assert "File name too long" in caplog.text


def test_without_label_studio_url_the_host_and_token_setup_sent_are_used(
    store, checkpoint, root, tmp_path, file_server
):
    with Served(store, checkpoint, root, tmp_path) as served:
        body = {"project": "3.1700000000", "schema": LABEL_CONFIG, "hostname": file_server,
                "access_token": "ls-key"}  # fmt: skip
        assert served.client.post("/setup", json=body).status_code == 200
        tasks = [{"id": 1, "data": {"image": "/data/upload/3/abc-photo.jpg"}}]
        answer = served.client.post("/predict", json={"tasks": tasks, "project": "3.1700000000",
                                                      "label_config": LABEL_CONFIG})  # fmt: skip
        other = served.client.post("/predict", json={"tasks": tasks, "project": "4.1700000000",
                                                     "label_config": LABEL_CONFIG})  # fmt: skip
    assert answer.json()["results"][0]  # downloaded with the token /setup gave for project 3
    assert _Files.seen == ["Token ls-key"]
    assert other.json()["results"] == [[]]  # another project: no host known, nothing fetched


def test_a_failed_download_is_that_task_alone(
    store, checkpoint, root, tmp_path, file_server, caplog
):
    with Served(
        store, checkpoint, root, tmp_path, label_studio_url=file_server, api_key="wrong"
    ) as served:
        results = served.predict(["/data/upload/3/abc-photo.jpg", _local("photos/p1.jpg")])
    assert results[0] == [] and results[1]
    assert "401" in caplog.text


# --- the webhook ------------------------------------------------------------------------------


def _event(
    action: str,
    annotation_id: int,
    *,
    url: str,
    text: str | None,
    shown: str | None,
    cancelled: bool = False,
    updated: str = "2026-12-01T10:00:00.000000Z",
) -> dict:
    result = (
        []
        if text is None
        else [
            {
                "from_name": "caption",
                "to_name": "image",
                "type": "textarea",
                "value": {"text": [text]},
            }
        ]
    )
    prediction = (
        {}
        if shown is None
        else {
            "result": [
                {
                    "from_name": "caption",
                    "to_name": "image",
                    "type": "textarea",
                    "value": {"text": [shown]},
                }
            ],
            "model_version": "v",
            "score": 0.5,
        }
    )
    return {
        "action": action,
        "annotation": {
            "id": annotation_id,
            "result": result,
            "was_cancelled": cancelled,
            "completed_by": 4,
            "created_at": "2026-12-01T09:00:00.000000Z",
            "updated_at": updated,
            "prediction": prediction,
            "task": 11,
        },
        "task": {"id": 11, "data": {"image": url}},
        "project": {"id": 1, "label_config": LABEL_CONFIG},
    }


def _reviews(store) -> list[tuple]:
    with store.session() as session:
        return session.execute(
            select(Image.path, Review.outcome, Review.text, Review.reviewer, Review.external_id)
            .join(Image, Image.id == Review.image_id)
            .order_by(Review.external_id)
        ).all()


def test_annotation_events_become_reviews(store, checkpoint, root, tmp_path):
    with Served(store, checkpoint, root, tmp_path) as served:
        results = served.predict(
            [_local("photos/p0.jpg"), _local("photos/p1.jpg"), _local("photos/p2.jpg")]
        )
        shown = [_text(r) for r in results]
        hook = served.client.post
        accept = _event(
            "ANNOTATION_CREATED", 1, url=_local("photos/p0.jpg"), text=shown[0], shown=shown[0]
        )
        edit = _event(
            "ANNOTATION_CREATED",
            2,
            url=_local("photos/p1.jpg"),
            text="a new caption",
            shown=shown[1],
        )
        skip = _event(
            "ANNOTATION_CREATED",
            3,
            url=_local("photos/p2.jpg"),
            text=None,
            shown=shown[2],
            cancelled=True,
        )
        answers = [hook("/webhook", json=e).json() for e in (accept, edit, skip)]
        assert [a["outcome"] for a in answers] == ["added", "added", "added"]
        assert hook("/webhook", json=accept).json()["outcome"] == "already"  # the same again
        stored = _reviews(store)
        assert stored == [
            ("photos/p0.jpg", "accepted", shown[0], "4", "label-studio:1:image:1"),
            ("photos/p1.jpg", "edited", "a new caption", "4", "label-studio:2:image:2"),
            ("photos/p2.jpg", "skipped", None, "4", "label-studio:3:image:3"),
        ]
        later = _event(
            "ANNOTATION_UPDATED",
            2,
            url=_local("photos/p1.jpg"),
            text="better still",
            shown=shown[1],
            updated="2026-12-02T10:00:00.000000Z",
        )
        assert hook("/webhook", json=later).json()["outcome"] == "updated"
        assert hook("/webhook", json=edit).json()["outcome"] == "already"  # older: kept out
        assert _reviews(store)[1][1:3] == ("edited", "better still")
        gone = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 3}], "project": {"id": 1}}
        assert hook("/webhook", json=gone).json()["outcome"] == "withdrawn"
        assert [r[4] for r in _reviews(store)] == [
            "label-studio:1:image:1",
            "label-studio:2:image:2",
        ]
        assert hook("/webhook", json=gone).status_code == 200  # again: nothing left to withdraw
        other = hook("/webhook", json={"action": "TASKS_CREATED", "tasks": []})
        assert other.status_code == 200 and other.json()["outcome"] == "ignored"
        training = hook("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
        assert training.status_code == 200


def test_an_annotation_without_a_prediction_is_judged_against_the_stored_draft(
    store, checkpoint, root, tmp_path
):
    with Served(store, checkpoint, root, tmp_path) as served:
        draft = _text(served.predict([_local("photos/p1.jpg")])[0])
        event = _event("ANNOTATION_CREATED", 5, url=_local("photos/p1.jpg"), text=draft, shown=None)
        assert served.client.post("/webhook", json=event).json()["detail"] == "accepted"
        # an image never predicted is registered first, then reviewed
        fresh = _event(
            "ANNOTATION_CREATED", 6, url=_local("photos/p2.jpg"), text="a caption", shown=None
        )
        answer = served.client.post("/webhook", json=fresh)
    assert answer.status_code == 200, answer.text
    assert [r[:2] for r in _reviews(store)] == [
        ("photos/p1.jpg", "accepted"),
        ("photos/p2.jpg", "edited"),
    ]


def test_an_event_for_an_unknown_image_is_refused_and_stores_nothing(
    store, checkpoint, root, tmp_path
):
    with Served(store, checkpoint, root, tmp_path) as served:
        event = _event(
            "ANNOTATION_CREATED", 7, url=_local("photos/missing.jpg"), text="x", shown="y"
        )
        answer = served.client.post("/webhook", json=event)
    assert answer.status_code == 422
    assert "missing.jpg" in answer.json()["error"]
    assert _reviews(store) == []


def test_label_studio_basic_auth_carries_the_api_key(store, checkpoint, root, tmp_path):
    with Served(store, checkpoint, root, tmp_path) as served:
        app = make_app(
            BackendSettings(served.predictor.model_version, api_key="s3cret"), served.predictor
        )
        client = TestClient(app)
        good = base64.b64encode(b"labelstudio:s3cret").decode()
        bad = base64.b64encode(b"labelstudio:nope").decode()
        assert client.get("/health", headers={"Authorization": f"Basic {good}"}).status_code == 200
        assert client.get("/health", headers={"Authorization": f"Basic {bad}"}).status_code == 401
        assert client.get("/health", headers={"Authorization": "Basic !!"}).status_code == 401
        body = json.dumps({"action": "TASKS_CREATED"})
        assert client.post("/webhook", content=body).status_code == 401


def test_the_reviewer_is_the_annotators_email_when_label_studio_says(
    store, checkpoint, root, tmp_path, file_server
):
    with Served(store, checkpoint, root, tmp_path, label_studio_url=file_server,
                api_key="ls-key") as served:  # fmt: skip
        shown = _text(served.predict([_local("photos/p1.jpg")])[0])
        for number in (8, 9):  # the second asks nobody: the answer is remembered
            event = _event("ANNOTATION_CREATED", number, url=_local("photos/p1.jpg"),
                           text=shown, shown=shown)  # fmt: skip
            assert served.client.post("/webhook", json=event).status_code == 200
    assert [r[3] for r in _reviews(store)] == ["ana@example.com", "ana@example.com"]
    assert _Files.seen.count("Token ls-key") == 1


def test_an_image_two_datasets_hold_is_reviewed_in_the_deepest(store, checkpoint, root, tmp_path):
    with Served(store, checkpoint, root, tmp_path) as served:
        shown = _text(served.predict([_local("photos/p1.jpg")])[0])  # into label-studio
        scan(store, [root / "photos"], dataset="photos", workers=0)  # the same file, again
        event = _event("ANNOTATION_CREATED", 12, url=_local("photos/p1.jpg"), text=shown,
                       shown=shown)  # fmt: skip
        answer = served.client.post("/webhook", json=event)
    assert answer.status_code == 200, answer.text
    with store.session() as session:
        reviewed = session.execute(
            select(Dataset.name, Image.path).join(Image).join(Review, Review.image_id == Image.id)
        ).all()
    assert reviewed == [("photos", "p1.jpg")]
