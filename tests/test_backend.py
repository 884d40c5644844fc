"""labeler/review/backend.py: the Label Studio ML backend's HTTP protocol through an HTTP client
(/health, /setup, the api key, the body limit), and `labeler serve`'s command line."""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET

import pytest
from captionkit import tiny_checkpoint
from starlette.testclient import TestClient
from typer.testing import CliRunner

from labeler.cli import app
from labeler.formats.labelstudio import config_path, write_label_studio
from labeler.model.captioner import ShowTellCaptioner
from labeler.model.drafts import DecodeSettings
from labeler.review import backend
from labeler.review.backend import BackendSettings, make_app

VERSION = "show-tell-abc123-0123456789ab"


@pytest.fixture
def exported_config(tmp_path):
    """The labeling config our own Label Studio export writes."""
    dest = tmp_path / "tasks.json"
    write_label_studio([], dest, document_root=tmp_path)
    return config_path(dest).read_text(encoding="utf-8")


def _client(**settings) -> TestClient:
    return TestClient(make_app(BackendSettings(model_version=VERSION, **settings)))


def _without(config: str, tag: str) -> str:
    root = ET.fromstring(config)
    for element in list(root.iter(tag)):
        root.remove(element)
    return ET.tostring(root, encoding="unicode")


def test_health_says_up():
    response = _client().get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "UP", "model_class": "labeler", "model_version": VERSION}


def test_setup_with_our_exported_config_answers_the_model_version(exported_config):
    body = {"project": "1.1700000000", "schema": exported_config, "extra_params": ""}
    response = _client().post("/setup", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"model_version": VERSION}


@pytest.mark.parametrize("tag", ["TextArea", "Image"])
def test_setup_names_what_the_config_lacks(exported_config, tag, caplog):
    response = _client().post("/setup", json={"schema": _without(exported_config, tag)})
    assert response.status_code == 400
    assert tag in response.json()["error"]
    assert tag in caplog.text  # also logged


def test_setup_names_a_textarea_that_points_to_no_image(exported_config):
    root = ET.fromstring(exported_config)
    next(root.iter("TextArea")).set("toName", "elsewhere")
    response = _client().post("/setup", json={"schema": ET.tostring(root, encoding="unicode")})
    assert response.status_code == 400
    assert "'elsewhere'" in response.json()["error"]


def test_setup_refuses_a_doctype(exported_config):
    bomb = '<!DOCTYPE View [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
    response = _client().post("/setup", json={"schema": bomb + exported_config})
    assert response.status_code == 400
    assert "DOCTYPE" in response.json()["error"]


def test_setup_without_a_schema_is_a_400():
    response = _client().post("/setup", json={"project": "1.2"})
    assert response.status_code == 400
    assert "schema" in response.json()["error"]


def test_malformed_json_is_a_one_line_400():
    response = _client().post("/setup", content=b'{"schema": ', headers={"content-type": "json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "bad JSON" in error and "\n" not in error


@pytest.mark.parametrize("scheme", ["Token", "Bearer"])
def test_the_api_key_is_accepted_as_token_or_bearer(scheme, exported_config):
    client = _client(api_key="s3cret")
    headers = {"Authorization": f"{scheme} s3cret"}
    assert client.get("/health", headers=headers).status_code == 200
    setup = client.post("/setup", json={"schema": exported_config}, headers=headers)
    assert setup.json() == {"model_version": VERSION}


@pytest.mark.parametrize("header", [None, "Token wrong", "Basic s3cret", "s3cret"])
def test_without_the_api_key_every_request_is_a_401(header, exported_config):
    client = _client(api_key="s3cret")
    headers = {} if header is None else {"Authorization": header}
    assert client.get("/health", headers=headers).status_code == 401
    response = client.post("/setup", json={"schema": exported_config}, headers=headers)
    assert response.status_code == 401
    assert "api key" in response.json()["error"]


def test_no_api_key_set_asks_for_none():
    assert _client().get("/health", headers={"Authorization": "Token x"}).status_code == 200


def test_a_body_over_the_limit_is_a_413(exported_config):
    client = _client(max_body=len(exported_config))
    response = client.post("/setup", json={"schema": exported_config})
    assert response.status_code == 413
    assert str(len(exported_config)) in response.json()["error"]


def test_a_chunked_body_over_the_limit_is_a_413_too():
    def chunks():
        for _ in range(10):
            yield b"x" * 64

    response = _client(max_body=200).post("/setup", content=chunks())
    assert response.status_code == 413


def test_serve_help():
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--document-root" in result.output and "--api-key" in result.output
    assert "Prediction score" in result.output


def test_serve_names_the_model_as_the_caption_job_does(tmp_path, monkeypatch):
    checkpoint = tiny_checkpoint(tmp_path / "m.pt")
    served = []
    monkeypatch.setattr(backend, "serve", lambda settings, predictor, **at: served.append(
        (settings, predictor.sources.document_root, at)))  # fmt: skip
    args = ["serve", "--model", str(checkpoint), "--port", "9999", "--document-root", "."]
    result = CliRunner().invoke(app, args, env={"LABELER_API_KEY": "k"})
    assert result.exit_code == 0, result.output
    built = ShowTellCaptioner.from_checkpoint(checkpoint, device="cpu")
    key = (built.decoding or DecodeSettings()).key()
    version = f"{built.name}-{key}"
    assert served == [(BackendSettings(model_version=version, api_key="k"), tmp_path,
                       {"host": "127.0.0.1", "port": 9999})]  # fmt: skip
    assert version in result.output
    assert backend.settings_for(checkpoint).model_version == version


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--document-root", "nowhere"], "--document-root nowhere: no such folder"),
        (["--label-studio-url", "localhost:8080"], "give an http(s) URL"),
    ],
)
def test_serve_refuses_bad_places_in_one_line(tmp_path, args, message):
    checkpoint = tiny_checkpoint(tmp_path / "m.pt")
    result = CliRunner().invoke(app, ["serve", "--model", str(checkpoint), *args])
    assert result.exit_code == 1
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_serve_without_the_extra_is_one_line_and_exit_1(monkeypatch, tmp_path):
    for name in [n for n in sys.modules if n.split(".")[0] in {"starlette", "uvicorn"}]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    monkeypatch.setitem(sys.modules, "starlette", None)
    monkeypatch.delitem(sys.modules, "labeler.review.backend", raising=False)
    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path / "m.pt")])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "labeler serve needs the serve extra: pip install 'labeler[serve]'"
    )
    assert not re.search("Traceback", result.output)
