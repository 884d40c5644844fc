"""`labeler serve`: the Label Studio ML backend's HTTP app: GET /health, POST /setup, POST
/predict and POST /webhook (the protocol of Label Studio 1.23, read from its source).

Starlette rather than the `label-studio-ml` SDK: the SDK on the package index is stale (Flask
pinned to 1.1.2), and the protocol is four small JSON endpoints. Starlette and uvicorn are the
optional `serve` extra, so only this module imports them and only the `serve` command imports
this module. The work behind /predict is predictor.py's, behind /webhook annotations.py's; both
run in a worker thread, so /health and /setup answer at once (Label Studio gives them 1 s and
3 s, and calls both before every batch of predictions).

Every request passes one ASGI middleware before any route: the api key (when set) and then the
body limit, checked on the declared length and again while the body streams in, so a body over
the limit is refused before a byte of it is parsed. Label Studio can only send the key as HTTP
Basic auth (the ML backend's "basic auth" password; any user name), and on the webhook only as a
header set on the webhook itself, so Basic, Token and Bearer are all accepted. JSON is parsed by
the one JSON reader (formats/streams.py); a labeling config is read by formats/labelstudio.py,
which refuses any DOCTYPE.

/predict answers one entry per task, in order (Label Studio throws every prediction away when
the count differs): a prediction whose score is the draft's p_accept and whose model_version is
the same string in every answer and in /setup's, or, for a task whose image cannot be read, an
empty list (no prediction), the reason logged. Images are read under the document root, or
downloaded from Label Studio with LABEL_STUDIO_URL and its API key, or with the host and token
Label Studio sent to /setup for that project.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from labeler.errors import FormatError, InputError
from labeler.formats.labelstudio import ConfigNames, caption_names, prediction_item
from labeler.formats.streams import parse_json
from labeler.review.annotations import handle_event
from labeler.review.predictor import Predictor
from labeler.review.task_images import Sources, image_value

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendSettings:
    model_version: str  # the same string in every answer, so Label Studio's score column fills
    api_key: str | None = None  # None: no Authorization header asked for
    max_body: int = 10 << 20  # bytes; a longer request body is answered 413 unread


def settings_for(checkpoint: str | Path, *, api_key: str | None = None) -> BackendSettings:
    """The settings serving `checkpoint` with its own decoding defaults, read from the
    checkpoint without building the network."""
    from labeler.model.captioner import ShowTellFile
    from labeler.model.drafts import DecodeSettings
    from labeler.review.predictor import model_version

    model = ShowTellFile.read(checkpoint, device="cpu")
    version = model_version(model, model.decoding or DecodeSettings())
    return BackendSettings(model_version=version, api_key=api_key or None)


def serve(
    settings: BackendSettings, predictor: Predictor, *, host: str = "127.0.0.1", port: int = 9090
) -> None:
    """Run the app until interrupted, the predictor's engine and run started first (model
    processes load the model before the first request) and stopped last."""
    ours = logging.getLogger("labeler")
    if not ours.handlers:  # a reason for every task left without a prediction, on stderr
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
    with predictor:
        uvicorn.run(make_app(settings, predictor), host=host, port=port, log_level="info")


def make_app(settings: BackendSettings, predictor: Predictor | None = None) -> Starlette:
    """The app; without a predictor (its own tests) /predict and /webhook answer 503."""
    sent: dict[str, Sources] = {}  # project id -> sources with the host and token /setup gave

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "UP", "model_class": "labeler",
                             "model_version": settings.model_version})  # fmt: skip

    async def setup(request: Request) -> JSONResponse:
        body = await _json_body(request)
        if isinstance(body, JSONResponse):
            return body
        schema = body.get("schema") if isinstance(body, dict) else None
        if not isinstance(schema, str):
            return _error("/setup", "the request has no schema (the labeling config) as text")
        try:
            names = caption_names(schema)
        except InputError as exc:
            return _error("/setup", str(exc))
        project = _project_id(body.get("project"))
        if predictor is not None and project is not None:
            given = _given_sources(predictor.sources, body)
            if given is not None:
                sent[project] = given
        log.info("project %s: captions go to %s -> %s", body.get("project"),
                 names.text_area, names.image)  # fmt: skip
        return JSONResponse({"model_version": settings.model_version})

    async def predict(request: Request) -> JSONResponse:
        if predictor is None:
            return _error("/predict", "no model is served", 503)
        body = await _json_body(request)
        if isinstance(body, JSONResponse):
            return body
        tasks = body.get("tasks") if isinstance(body, dict) else None
        if not isinstance(tasks, list):
            return _error("/predict", "the request has no list of tasks")
        try:
            names = caption_names(body.get("label_config") or "")
        except InputError as exc:
            return _error("/predict", str(exc))
        sources = sent.get(_project_id(body.get("project")) or "", predictor.sources)
        images = [(image_value(task, names.value_key), _task_id(task)) for task in tasks]
        answers = await run_in_threadpool(predictor.predict, images, sources)
        results: list[Any] = []
        for task, answer in zip(tasks, answers, strict=True):
            if answer.text is None:
                log.warning("task %s: no prediction: %s", _task_id(task), answer.reason)
                results.append([])
                continue
            results.append(_prediction(names, answer.text, answer.score, settings.model_version))
        return JSONResponse({"results": results})

    async def webhook(request: Request) -> JSONResponse:
        if predictor is None:
            return _error("/webhook", "no store is served", 503)
        raw = await request.body()
        body = await _json_body(request)
        if isinstance(body, JSONResponse):
            return body
        project = body.get("project") if isinstance(body, dict) else None
        key = _project_id(project.get("id") if isinstance(project, dict) else project)
        sources = sent.get(key or "", predictor.sources)
        result = await run_in_threadpool(
            handle_event, predictor.store, body, raw, sources=sources, register=predictor.register
        )
        if result.outcome == "refused":
            return _error("/webhook", f"{result.action}: {result.detail}", 422)
        if result.outcome != "ignored":
            log.info("%s: %s %s", result.action, result.outcome, result.detail)
        return JSONResponse(result.to_dict())

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/", health, methods=["GET"]),
        Route("/setup", setup, methods=["POST"]),
        Route("/predict", predict, methods=["POST"]),
        Route("/webhook", webhook, methods=["POST"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(_Guard, settings=settings)])


def _prediction(names: ConfigNames, text: str, score: float | None, version: str) -> dict[str, Any]:
    # Label Studio refuses a score outside [0, 1]; where confidence stands in for p_accept,
    # rounding can push exp(0) a hair over.
    clamped = None if score is None else min(max(float(score), 0.0), 1.0)
    return {"result": [prediction_item(names, text)], "score": clamped, "model_version": version}


def _project_id(project: object) -> str | None:
    """The project's id from "<id>.<created timestamp>" (setup, predict) or a bare id."""
    if isinstance(project, bool) or not isinstance(project, int | str):
        return None
    head = str(project).split(".", 1)[0].strip()
    return head if head.isdigit() else None


def _task_id(task: object) -> object:
    return task.get("id") if isinstance(task, dict) else None


def _given_sources(sources: Sources, body: dict[str, Any]) -> Sources | None:
    """Without LABEL_STUDIO_URL, the host and the project owner's token /setup sent."""
    host, token = body.get("hostname"), body.get("access_token")
    if sources.label_studio_url is not None or not isinstance(host, str) or not host:
        return None
    if not host.startswith(("http://", "https://")):
        return None
    key = token if isinstance(token, str) and token else None
    return dataclasses.replace(sources, label_studio_url=host.rstrip("/"), api_key=key)


async def _json_body(request: Request) -> Any:
    """The request's JSON, or a 400 answer naming the fault in one line."""
    raw = await request.body()  # the guard has already bounded it
    try:
        return parse_json(raw.decode("utf-8"), "request body")
    except UnicodeDecodeError:
        return _error(request.url.path, "request body: not UTF-8")
    except FormatError as exc:
        return _error(request.url.path, str(exc))


def _error(path: str, message: str, status: int = 400) -> JSONResponse:
    log.warning("%s: %s", path, message)
    return JSONResponse({"error": message}, status_code=status)


class _Guard:
    """The api key (401) and the body limit (413), before any route runs."""

    def __init__(self, app: Any, *, settings: BackendSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.settings.api_key is not None and not self._authorized(headers):
            response = _error(scope["path"], "missing or wrong api key", 401)
            response.headers["WWW-Authenticate"] = "Token"
            await response(scope, receive, send)
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.settings.max_body:
            await self._too_large(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:  # read it whole here, counting, whatever the declared length said
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.settings.max_body:
                await self._too_large(scope, receive, send)
                return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    def _authorized(self, headers: dict[str, str]) -> bool:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        given, scheme = given.strip(), scheme.lower()
        if scheme == "basic":  # Label Studio's only way: the key is the password, any user
            try:
                given = base64.b64decode(given, validate=True).decode("utf-8").partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                return False
        elif scheme not in {"token", "bearer"}:
            return False
        return hmac.compare_digest(given.encode(), (self.settings.api_key or "").encode())

    async def _too_large(self, scope: Any, receive: Any, send: Any) -> None:
        limit = self.settings.max_body
        response = _error(scope["path"], f"request body over the limit of {limit} bytes", 413)
        await response(scope, receive, send)
