"""Where a Label Studio task's image is on this machine: its URL to a local file, never outside
the document root, downloading what only Label Studio (or a web server) can hand over.

A task names its image by the URL in its data (the Image tag's `value`, e.g. `$image`):
- `/data/local-files/?d=<relative path>` (local-files storage): the file under the document
  root when serve has one (`--document-root`, Label Studio's LOCAL_FILES_DOCUMENT_ROOT), the
  path resolved with its symbolic links and refused when it leaves the root; otherwise it is
  downloaded from Label Studio.
- any other path on the Label Studio server (`/data/upload/...` for uploaded files): downloaded
  from LABEL_STUDIO_URL with its API key.
- `http(s)://...`: downloaded; the API key is sent only to LABEL_STUDIO_URL's own origin.
- a cloud URI (`s3://`, `gs://`, `azure-blob://`): Label Studio presigns it for the task
  (`/tasks/<id>/presign/?fileuri=<base64>`), and the presigned URL, followed without the API
  key, is downloaded.
Downloads land in the download folder under a path derived from the URL, one folder per source
(`label-studio/<host>/`, `web/<host>/`, `cloud/<scheme>/<bucket>/`; a query string adds its hash
to the name) and never climbing out of it, written whole (labeler.atomic), and reused when
already there: uploads have unique names, and a served file is registered by its content hash
anyway. Redirects are followed by hand, to http(s) only, and the API key goes to Label Studio's
own origin only, at every hop. Every refusal is a `Missed` with a one-line reason for that task
alone.

The one other call serve makes to Label Studio names an annotator: the user's e-mail for the id
an annotation event carries (`annotator`), asked once per user and remembered.
"""

from __future__ import annotations

import base64
import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labeler.atomic import atomic_binary
from labeler.errors import FormatError, InputError
from labeler.formats.labelstudio import LOCAL_FILES
from labeler.formats.streams import parse_json

DOWNLOAD_TIMEOUT_S = 30.0
MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
USER_TIMEOUT_S = 0.4  # the webhook that asks has 1 s to answer Label Studio
MAX_DOWNLOAD = 256 << 20  # bytes: a larger answer is not an image this tool decodes
CLOUD_SCHEMES = ("s3", "gs", "azure-blob")


@dataclass(frozen=True)
class Sources:
    """Where images may come from: the document root and the Label Studio server."""

    document_root: Path | None  # resolved; local-files paths are read under it
    download_dir: Path  # resolved; downloads land under it
    label_studio_url: str | None = None  # e.g. http://localhost:8080, no trailing slash
    api_key: str | None = None  # Label Studio's API key, sent as "Token <key>"


@dataclass(frozen=True)
class Place:
    """A task's image on this machine: `path` is absolute; `url` is set while the file still
    has to be downloaded there."""

    path: Path
    url: str | None = None


@dataclass(frozen=True)
class Missed:
    reason: str


def image_value(task: object, key: str) -> str | Missed:
    """The URL in the task's data under `key` (the Image tag's value without its '$')."""
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict):
        return Missed("the task has no data object")
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        return Missed(f"the task's data has no image URL under {key!r}")
    return value.strip()


def place(url: str, sources: Sources, *, task_id: object = None) -> Place | Missed:
    """Where the image at `url` is, or is to be downloaded to."""
    parsed = urllib.parse.urlsplit(url)
    local = _local_files_path(parsed)
    if local is not None:
        return _local(local, url, sources)
    if parsed.scheme in CLOUD_SCHEMES:
        return _cloud(url, parsed, sources, task_id)
    if parsed.scheme in ("http", "https"):
        target = _under(sources.download_dir, ["web", parsed.netloc, *_parts(parsed.path)])
        if isinstance(target, Missed):
            return target
        if parsed.query:  # img.php?id=1 and ?id=2 are two images: two files
            digest = hashlib.sha256(parsed.query.encode()).hexdigest()[:12]
            target = target.with_name(f"{target.stem}-{digest}{target.suffix}")
        return Place(target, url)
    if parsed.scheme or parsed.netloc or not parsed.path.startswith("/"):
        return Missed(f"cannot read image URL {url!r:.120}: not a Label Studio or web URL")
    if sources.label_studio_url is None:
        return Missed(f"{url!r:.120} is served by Label Studio: set LABEL_STUDIO_URL")
    target = _under(sources.download_dir, [*_server(sources), *_parts(parsed.path)])
    return target if isinstance(target, Missed) else Place(target, _on_server(url, sources))


def _local_files_path(parsed: urllib.parse.SplitResult) -> str | None:
    """The relative path `d` of a local-files URL (with or without the server's origin)."""
    if parsed.path.rstrip("/") != LOCAL_FILES.split("?")[0].rstrip("/"):
        return None
    values = urllib.parse.parse_qs(parsed.query, keep_blank_values=True).get("d")
    return values[0] if values else ""


def _local(relative: str, url: str, sources: Sources) -> Place | Missed:
    if sources.document_root is None:
        if sources.label_studio_url is None:
            return Missed(f"{url!r:.120} is a local file: give --document-root (or set "
                          "LABEL_STUDIO_URL to download it)")  # fmt: skip
        target = _under(sources.download_dir, [*_server(sources), "local-files",
                                               *relative.split("/")])  # fmt: skip
        return target if isinstance(target, Missed) else Place(target, _on_server(url, sources))
    root = sources.document_root
    if not relative or "\x00" in relative:
        return Missed(f"{url!r:.120} names no file")
    path = Path(os.path.realpath(root / relative.lstrip("/")))
    if os.path.commonpath([path, root]) != str(root):
        return Missed(f"{relative!r:.120} is outside the document root {root}")
    return Place(path)


def _cloud(
    url: str, parsed: urllib.parse.SplitResult, sources: Sources, task_id: object
) -> Place | Missed:
    if sources.label_studio_url is None:
        return Missed(f"{url!r:.120} is in cloud storage: set LABEL_STUDIO_URL (and its API "
                      "key) so Label Studio can presign it")  # fmt: skip
    if isinstance(task_id, bool) or not isinstance(task_id, int):
        return Missed(f"{url!r:.120} is in cloud storage and the task has no id to presign it")
    parts = ["cloud", parsed.scheme, parsed.netloc, *_parts(parsed.path)]
    target = _under(sources.download_dir, parts)
    if isinstance(target, Missed):
        return target
    encoded = base64.urlsafe_b64encode(url.encode()).decode()
    presign = f"{sources.label_studio_url}/tasks/{task_id}/presign/?fileuri={encoded}"
    return Place(target, presign)


def _server(sources: Sources) -> list[str]:
    """The download folder's part for this Label Studio server's own files."""
    assert sources.label_studio_url is not None
    return ["label-studio", urllib.parse.urlsplit(sources.label_studio_url).netloc]


def _on_server(url: str, sources: Sources) -> str:
    assert sources.label_studio_url is not None
    parsed = urllib.parse.urlsplit(url)
    query = f"?{parsed.query}" if parsed.query else ""
    return f"{sources.label_studio_url}{parsed.path}{query}"


def _parts(path: str) -> list[str]:
    return [urllib.parse.unquote(p) for p in path.split("/")]


def _under(folder: Path, parts: list[str]) -> Path | Missed:
    """folder/parts, refusing any part that climbs ('..') or holds a separator."""
    clean = [p for p in parts if p not in ("", ".")]
    if not clean or any(p == ".." or "/" in p or "\\" in p or "\x00" in p for p in clean):
        return Missed(f"cannot keep a download at {'/'.join(parts)!r:.120}")
    return folder.joinpath(*clean)


def fetch(item: Place, sources: Sources) -> Place | Missed:
    """Download `item` to its path unless a file is already there; the place, now local."""
    if item.url is None or item.path.is_file():
        return Place(item.path)
    try:
        data = _download(item, sources)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        if isinstance(exc, urllib.error.HTTPError):
            reason: object = f"HTTP {exc.code} {exc.reason}"
        else:
            reason = getattr(exc, "reason", None) or exc
        return Missed(f"download of {_shown(item.url, sources)} failed: {reason}")
    if isinstance(data, Missed):
        return data
    try:
        item.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_binary(item.path) as out:
            out.handle.write(data)
    except (OSError, InputError) as exc:
        return Missed(
            f"cannot keep the download at {item.path}: {getattr(exc, 'strerror', None) or exc}"
        )
    return Place(item.path)


def _download(item: Place, sources: Sources) -> bytes | Missed:
    """The bytes at the place's URL. Redirects (a presign call answers with one) are followed
    here, at most MAX_REDIRECTS, to http(s) only, and the API key goes to Label Studio's own
    origin only, at every hop: never to the storage or a server a redirect names."""
    assert item.url is not None
    url = item.url
    opener = urllib.request.build_opener(_NoRedirect)
    for _ in range(MAX_REDIRECTS + 1):
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            return Missed(f"{_shown(item.url, sources)} leads to {_shown(url, sources)}: "
                          "only http(s) is followed")  # fmt: skip
        headers = {}
        if sources.api_key and _same_origin(url, sources.label_studio_url):
            headers["Authorization"] = f"Token {sources.api_key}"
        try:
            with opener.open(urllib.request.Request(url, headers=headers),
                             timeout=DOWNLOAD_TIMEOUT_S) as answer:  # fmt: skip
                return _read(answer, url, sources)
        except urllib.error.HTTPError as exc:
            location = exc.headers.get("Location") if exc.code in REDIRECTS else None
            if location is None:
                raise
            url = urllib.parse.urljoin(url, location)
    return Missed(f"{_shown(item.url, sources)}: more than {MAX_REDIRECTS} redirects")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the redirect comes back as an HTTPError, followed by hand (_download)


def _read(answer: Any, url: str, sources: Sources) -> bytes | Missed:
    data = answer.read(MAX_DOWNLOAD + 1)
    if len(data) > MAX_DOWNLOAD:
        return Missed(f"{_shown(url, sources)} is over {MAX_DOWNLOAD >> 20} MiB")
    return data


def _same_origin(url: str, base: str | None) -> bool:
    if base is None:
        return False
    a, b = urllib.parse.urlsplit(url), urllib.parse.urlsplit(base)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def _shown(url: str, sources: Sources) -> str:
    """A URL for a log line: another server's without its query (a presigned URL's query is a
    credential)."""
    if _same_origin(url, sources.label_studio_url):
        return url
    parsed = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path, "", ""))


_annotators: dict[tuple[str, str], str] = {}  # (Label Studio URL, user id) -> e-mail


def annotator(user_id: str, sources: Sources) -> str:
    """The e-mail of Label Studio's user `user_id`, when the server and key are known and it
    answers at once the first time it is asked; else the id as given. Either is kept, so a
    user's reviews carry one name for as long as this backend runs."""
    if sources.label_studio_url is None or not sources.api_key or not user_id.isdigit():
        return user_id
    key = (sources.label_studio_url, user_id)
    if key not in _annotators:
        url = f"{sources.label_studio_url}/api/users/{user_id}/"
        headers = {"Authorization": f"Token {sources.api_key}", "Accept": "application/json"}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                        timeout=USER_TIMEOUT_S) as answer:  # fmt: skip
                user = parse_json(answer.read(1 << 20).decode("utf-8"), url)
        except (urllib.error.URLError, OSError, ValueError, FormatError):
            user = None  # the id, then, for as long as this backend runs: one name a user
        email = user.get("email") if isinstance(user, dict) else None
        _annotators[key] = email if isinstance(email, str) and email.strip() else user_id
    return _annotators[key]
