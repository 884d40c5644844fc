"""`labeler serve`: the Label Studio ML backend's HTTP app (GET /health, POST /setup).

Starlette rather than the `label-studio-ml` SDK: the SDK on the package index is stale (Flask
pinned to 1.1.2), and the protocol is four small JSON endpoints. Starlette and uvicorn are the
optional `serve` extra, so only this module imports them and only the `serve` command imports
this module.

Every request passes one ASGI middleware before any route: the api key (when set) and then the
body limit, checked on the declared length and again while the body streams in, so a body over
the limit is refused before a byte of it is parsed. JSON is parsed by the one JSON reader
(formats/streams.py); a labeling config is read with xml.etree after a refusal of any DOCTYPE,
which is where entity declarations (and their expansion bombs) would live.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.parsers import expat

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from labeler.errors import FormatError, InputError
from labeler.formats.streams import parse_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendSettings:
    model_version: str  # the same string in every answer, so Label Studio's score column fills
    api_key: str | None = None  # None: no Authorization header asked for
    max_body: int = 10 << 20  # bytes; a longer request body is answered 413 unread


@dataclass(frozen=True)
class ConfigNames:
    """Where a caption goes in a labeling config: from_name and to_name of a result."""

    text_area: str
    image: str


def settings_for(checkpoint: str | Path, *, api_key: str | None = None) -> BackendSettings:
    """The settings serving `checkpoint`: model_version is the caption job's model name and its
    decoding settings key, read from the checkpoint without building the network."""
    from labeler.model.captioner import ShowTellFile
    from labeler.model.drafts import DecodeSettings

    model = ShowTellFile.read(checkpoint, device="cpu")
    key = (model.decoding or DecodeSettings()).key()
    return BackendSettings(model_version=f"{model.name}-{key}", api_key=api_key or None)


def serve(settings: BackendSettings, *, host: str = "127.0.0.1", port: int = 9090) -> None:
    """Run the app until interrupted."""
    uvicorn.run(make_app(settings), host=host, port=port, log_level="info")


def make_app(settings: BackendSettings) -> Starlette:
    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "UP", "model_class": "labeler"})

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
        log.info("project %s: captions go to %s -> %s", body.get("project"),
                 names.text_area, names.image)  # fmt: skip
        return JSONResponse({"model_version": settings.model_version})

    routes = [Route("/health", health, methods=["GET"]), Route("/setup", setup, methods=["POST"])]
    return Starlette(routes=routes, middleware=[Middleware(_Guard, settings=settings)])


def caption_names(config: str) -> ConfigNames:
    """The first TextArea of a labeling config and the Image it points to (toName); an
    InputError naming what is missing, or a DOCTYPE (entity declarations are refused)."""
    _refuse_doctype(config)
    try:
        root = ET.fromstring(config)
    except ET.ParseError as exc:
        raise InputError(f"the labeling config is not well-formed XML: {exc}") from None
    images = {el.get("name") for el in root.iter("Image") if el.get("name")}
    area = next(root.iter("TextArea"), None)
    if area is None or not area.get("name"):
        raise InputError("the labeling config has no TextArea with a name (the caption's field)")
    if not images:
        raise InputError("the labeling config has no Image with a name (what is captioned)")
    targets = [t.strip() for t in (area.get("toName") or "").split(",") if t.strip()]
    image = next((t for t in targets if t in images), None)
    if image is None:
        known = ", ".join(sorted(images))
        raise InputError(f"the TextArea {area.get('name')!r} points to no Image (toName "
                         f"{area.get('toName')!r}; Images: {known})")  # fmt: skip
    return ConfigNames(text_area=area.get("name", ""), image=image)


def _refuse_doctype(config: str) -> None:
    parser = expat.ParserCreate()

    def refuse(*_args: object) -> None:
        raise InputError("the labeling config has a DOCTYPE or entity declaration; remove it")

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    with contextlib.suppress(expat.ExpatError):  # reported by the parse that follows
        parser.Parse(config, True)


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
        key = self.settings.api_key or ""
        return scheme.lower() in {"token", "bearer"} and hmac.compare_digest(
            given.strip().encode(), key.encode()
        )

    async def _too_large(self, scope: Any, receive: Any, send: Any) -> None:
        limit = self.settings.max_body
        response = _error(scope["path"], f"request body over the limit of {limit} bytes", 413)
        await response(scope, receive, send)
