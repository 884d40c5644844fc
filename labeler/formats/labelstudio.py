"""Label Studio: tasks with pre-annotations out, the three export flavours back in.

Out: a JSON array of tasks (DESIGN.md, "Interchange formats") and, beside it,
`<stem>.config.xml`, the labeling config to paste into the project. Each task's `data` carries
the image URL and everything `labeler import` needs to match the task back without Label
Studio's own ids: image_id, path, content_hash, caption_id, and the draft itself
(`draft_caption`, so that accepted-unchanged can be told from edited). No data key is named
`caption`: Label Studio's CSV export would rename a data key that collides with the control's
column. The best draft is the task's one prediction, whose `score` is its p_accept (the
calibrated probability that it is accepted unchanged, which Label Studio sorts and filters tasks
by; `data` carries it too, beside the raw confidence). The n-best alternatives are not
predictions: Label Studio's Data Manager averages the scores of a task's predictions of one
model version, so they would drag the task's score away from the best draft's. They travel as
text in `data["alternatives"]`, one line per alternative, best first, each with its p_accept,
and the config shows them under a header when the export has any. Every task carries the key
(empty without alternatives) because Label Studio refuses to import a task that lacks a key the
config names, and the config is only known once every task is written.

The two files are staged together and renamed at the end (`atomic_outputs`).

In: one record per task from the JSON export, one per annotation from the flat ones.
- JSON (the full export): of the annotations not cancelled, the latest (updated_at, else
  created_at) wins; a task whose annotations were all cancelled was skipped. A submitted
  annotation without a caption result means the reviewer deleted the draft: rejected.
- JSON_MIN and CSV are what Label Studio's converter flattens that into, one record per
  annotation not cancelled: the data keys, the control's text as `caption` (a string; for
  several text lines {"text": [...]} or a list of those, JSON-encoded in CSV), annotator,
  annotation_id, created_at, updated_at. Cancelled annotations are dropped by the converter,
  so no skipped outcome comes back from these; a record with an annotation_id but no caption
  is rejected, one without an annotation_id (a task nobody annotated) is not reviewed.
Every record names its annotation (`external_id`, "label-studio:<annotation id>") and the
annotation's update time (updated_at, else created_at), so that one annotation is one review
whichever export brought it: the JSON export gives the annotation's `id`, the flat ones its
`annotation_id`, and the times come from the same fields. Annotation ids are the primary key of
Label Studio's annotations table, unique across the projects of one server; the project id is
not part of the name because only the JSON export carries it (the same annotation through JSON
and CSV would otherwise be two reviews). The store adds the image it matched, which keeps two
servers' annotations with one id apart unless they review the same image.
The reviewer is the annotator's e-mail, else their name, else Label Studio's user id:
`completed_by` is an id or a user object, the flat exports' `annotator` an id or an e-mail, and
some versions add `created_username` / `updated_by` as "user@example.com, 1".
Several text lines are joined with a space: captions are one line everywhere else.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.parsers import expat

from labeler.atomic import atomic_outputs
from labeler.errors import FormatError, InputError
from labeler.formats.tabular import json_text
from labeler.records import (
    ExportResult,
    ExportRow,
    ReviewRecord,
    decide_outcome,
    finite_or_none,
    int_field,
    text_field,
    time_field,
)

CONTROL = "caption"  # the TextArea's name: from_name in results, the column in flat exports
OBJECT = "image"
ALTERNATIVES = "alternatives"  # the data key and the Text tag showing the n-best alternatives
LABEL_CONFIG = (
    f'<View><Image name="{OBJECT}" value="$image"/><TextArea name="{CONTROL}" '
    f'toName="{OBJECT}" editable="true" maxSubmissions="1"/></View>\n'
)
LABEL_CONFIG_WITH_ALTERNATIVES = LABEL_CONFIG.replace(
    "</View>",
    f'<Header value="Other drafts (p_accept)"/><Text name="{ALTERNATIVES}" '
    f'value="${ALTERNATIVES}"/></View>',
)
LOCAL_FILES = "/data/local-files/?d="
EXTERNAL_PREFIX = "label-studio:"  # a record's external_id: this and the annotation id
_WHOLE = re.compile(r"\s*(\d{1,20})(?:\.0*)?\s*")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def config_path(dest: Path) -> Path:
    """Where the labeling config goes: tasks.json -> tasks.config.xml."""
    return dest.with_name(f"{dest.stem}.config.xml")


def image_url(row: ExportRow, *, document_root: Path | None, url_prefix: str | None) -> str:
    """A local-files URL relative to the document root, or the URL prefix plus the path.

    The path is percent-encoded: Label Studio decodes the query, and a '#', '&' or space in
    a file name would otherwise cut the URL short.
    """
    if url_prefix is not None:
        return f"{url_prefix.rstrip('/')}/{quote(row.path)}"
    assert document_root is not None
    image = Path(os.path.abspath(row.abs_path))
    try:
        relative = image.relative_to(document_root)
    except ValueError:
        raise InputError(
            f"image {row.abs_path} (id {row.image_id}) is not under the document root "
            f"{document_root}; use a root that contains every image, or a URL prefix"
        ) from None
    return LOCAL_FILES + quote(relative.as_posix())


def _prediction(row: ExportRow) -> dict[str, Any]:
    score = finite_or_none(row.p_accept)
    result = {
        "id": "c0",
        "from_name": CONTROL,
        "to_name": OBJECT,
        "type": "textarea",
        "value": {"text": [row.text]},
    }
    return {
        "model_version": row.model_version,
        # Label Studio refuses a score outside [0, 1]; where confidence stands in for p_accept,
        # rounding can push exp(0) a hair over.
        "score": None if score is None else min(max(score, 0.0), 1.0),
        "result": [result],
    }


def alternatives_text(row: ExportRow) -> str:
    """The alternatives as the reviewer reads them: one line each, best first, with p_accept."""
    lines = []
    for alternative in row.alternatives:
        text = " ".join(alternative.text.splitlines())  # one line per alternative
        score = finite_or_none(alternative.p_accept)
        lines.append(text if score is None else f"{text}  ({score:.2f})")
    return "\n".join(lines)


def task(row: ExportRow, url: str) -> dict[str, Any]:
    """One task: the image, the ids to match it back, the best draft as its one prediction."""
    least = row.least_certain
    data = {
        "image": url,
        "image_id": row.image_id,
        "dataset": row.dataset,
        "path": row.path,
        "content_hash": row.content_hash,
        "caption_id": row.caption_id,
        "draft_caption": row.text,
        "p_accept": row.p_accept,
        "confidence": row.confidence,
        "log_likelihood": row.log_likelihood,
        "least_certain_word": least[0] if least else None,
        ALTERNATIVES: alternatives_text(row),
    }
    return {"data": data, "predictions": [_prediction(row)]}


def write_label_studio(
    rows: Iterable[ExportRow],
    dest: Path,
    *,
    force: bool = False,
    document_root: Path | None = None,
    url_prefix: str | None = None,
) -> ExportResult:
    """Write the tasks to `dest` and the labeling config to `config_path(dest)`; the config
    shows the alternatives when any task has them."""
    if (document_root is None) == (url_prefix is None):
        raise InputError("give either a document root (local files) or a URL prefix")
    root = Path(os.path.abspath(document_root)) if document_root is not None else None
    config = config_path(dest)
    count = 0
    any_alternatives = False
    with atomic_outputs([dest, config], force=force) as (out, config_out):
        out.write("[")
        for row in rows:
            url = image_url(row, document_root=root, url_prefix=url_prefix)
            out.write(",\n" if count else "\n")
            out.write(json_text(task(row, url)))
            any_alternatives = any_alternatives or bool(row.alternatives)
            count += 1
        out.write("\n]\n")
        config_out.write(LABEL_CONFIG_WITH_ALTERNATIVES if any_alternatives else LABEL_CONFIG)
    return ExportResult(count=count, paths=[dest, config])


# --- reading Label Studio's exports ---------------------------------------------------------


def _user(value: object) -> tuple[str | None, str | None, str | None]:
    """(e-mail, name, id) of a user as Label Studio writes one: an id, a user object, an e-mail,
    or "user@example.com, 1"."""
    if isinstance(value, dict):
        email = str(value.get("email") or "").strip()
        name = " ".join(str(value.get(k) or "").strip() for k in ("first_name", "last_name"))
        user_id = value.get("id")
        if user_id is not None and not isinstance(user_id, int | str):
            user_id = None
        return email or None, name.strip() or None, None if user_id is None else str(user_id)
    if isinstance(value, bool) or value is None or isinstance(value, list):
        return None, None, None
    if isinstance(value, int | float):
        return None, None, str(value)
    email = name = user_id = None
    for part in (p.strip() for p in str(value).split(",")):
        if "@" in part and email is None:
            email = part
        elif part.isdigit() and user_id is None:
            user_id = part
        elif part and name is None:
            name = part
    return email, name, user_id


def _reviewer(completed_by: object, *others: object) -> str | None:
    """The annotator's e-mail, else their name, else their id. `completed_by` names the
    annotator; `others` (created_username, updated_by) only count where they name the same
    user id, or carry none: updated_by may be someone who edited the annotation later."""
    email, name, user_id = _user(completed_by)
    for other in others:
        other_email, other_name, other_id = _user(other)
        if user_id is not None and other_id is not None and other_id != user_id:
            continue
        email, name = email or other_email, name or other_name
        user_id = user_id or other_id
    return email or name or user_id


def _ids(where: str, data: Mapping[str, Any]) -> dict[str, Any]:
    ids = {
        "image_id": int_field(data.get("image_id"), where, "image_id"),
        "path": text_field(data.get("path"), where, "path") or None,
        "content_hash": text_field(data.get("content_hash"), where, "content_hash") or None,
    }
    if not any(ids.values()):
        raise FormatError(f"{where}: the task data has no image_id, path or content_hash")
    ids["caption_id"] = int_field(data.get("caption_id"), where, "caption_id")
    ids["draft_text"] = text_field(data.get("draft_caption"), where, "draft_caption")
    return ids


def _joined(texts: Iterable[object], where: str) -> str:
    parts = [text_field(t, where, CONTROL) for t in texts]
    return " ".join(p for p in parts if p)


def _annotation_text(annotation: Mapping[str, Any], where: str, control: str) -> str | None:
    """The control's text in one annotation's result, or None when there is none."""
    result = annotation.get("result") or []
    if not isinstance(result, list):
        raise FormatError(f"{where}: annotation result is not a list")
    texts = []
    for region in result:
        if isinstance(region, dict) and region.get("from_name") == control:
            value = region.get("value") or {}
            text = value.get("text") if isinstance(value, dict) else None
            texts.extend(text if isinstance(text, list) else [text])
    return _joined(texts, where) if texts else None


def _latest(annotations: list[dict[str, Any]], where: str) -> dict[str, Any]:
    # Parsed, not compared as text: '...00Z' sorts after '...00.5Z' as a string.
    return max(annotations, key=lambda a: _annotation_time(a, where) or _EPOCH)


def review_from_task(where: str, item: object, *, control: str = CONTROL) -> ReviewRecord | None:
    """A task of Label Studio's JSON export; None when nobody annotated it."""
    if not isinstance(item, dict) or not isinstance(item.get("data"), dict):
        raise FormatError(f"{where}: not a Label Studio task (no 'data' object)")
    ids = _ids(where, item["data"])
    annotations = item.get("annotations", item.get("completions"))  # older exports: completions
    if annotations is None:
        return None
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        raise FormatError(f"{where}: 'annotations' is not a list of objects")
    if not annotations:
        return None
    done = [a for a in annotations if not (a.get("was_cancelled") or a.get("skipped"))]
    chosen = _latest(done or annotations, where)
    if not done:
        reviewed, outcome = None, "skipped"
    else:
        reviewed = _annotation_text(chosen, where, control)
        outcome = None if reviewed else "rejected"
    decided = decide_outcome(where, ids["draft_text"], reviewed, outcome)
    assert decided is not None  # an outcome or a text is always given here
    changed = _annotation_time(chosen, where)
    return ReviewRecord(
        where=where,
        **ids,
        reviewed_text=decided[0],
        outcome=decided[1],
        reviewer=_reviewer(
            chosen.get("completed_by"), chosen.get("created_username"), chosen.get("updated_by")
        ),
        reviewed_at=changed,
        external_id=external_id(chosen.get("id"), where),
        external_updated_at=changed,
    )


def external_id(annotation_id: object, where: str) -> str | None:
    """The name of an annotation across exports: its id, written the same from JSON (a number)
    and from CSV (text, '17' or '17.0' after a spreadsheet). Any size: it is never stored as a
    number, and a server may count its annotations in 64 bits."""
    if annotation_id is None or annotation_id == "":
        return None
    found = None if isinstance(annotation_id, bool) else _WHOLE.fullmatch(str(annotation_id))
    if found is None:
        raise FormatError(
            f"{where}: annotation_id must be a whole number, got {annotation_id!r:.40}"
        )
    return f"{EXTERNAL_PREFIX}{int(found.group(1))}"


def _annotation_time(record: Mapping[str, Any], where: str) -> datetime | None:
    stamp = record.get("updated_at") or record.get("created_at")
    return time_field(stamp, where, "updated_at")


def _flat_caption(value: object, where: str) -> str | None:
    """`caption` of JSON_MIN / CSV: text, or for several text lines {"text": [...]} (one region)
    or a list of those (several regions), JSON-encoded in CSV."""
    if isinstance(value, str) and value[:2] in ('{"', "[{"):
        try:
            value = json.loads(value)
        except ValueError:
            return value  # a caption that merely starts like JSON
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        texts: list[object] = []
        for part in value:
            text = part.get("text") if isinstance(part, dict) else part
            texts.extend(text if isinstance(text, list) else [text])
        return _joined(texts, where) or None
    return text_field(value, where, CONTROL) or None


def review_from_flat(
    where: str, item: Mapping[str, Any], *, control: str = CONTROL
) -> ReviewRecord | None:
    """A JSON_MIN record or a CSV row; None when the task was not annotated."""
    if not isinstance(item, Mapping):
        raise FormatError(f"{where}: expected an object, got {type(item).__name__}")
    ids = _ids(where, item)
    reviewed = _flat_caption(item.get(control), where)
    annotated = reviewed is not None or item.get("annotation_id") not in (None, "")
    if not annotated:
        return None
    decided = decide_outcome(where, ids["draft_text"], reviewed, None if reviewed else "rejected")
    assert decided is not None
    changed = _annotation_time(item, where)
    return ReviewRecord(
        where=where,
        **ids,
        reviewed_text=decided[0],
        outcome=decided[1],
        reviewer=_reviewer(
            item.get("annotator"), item.get("created_username"), item.get("updated_by")
        ),
        reviewed_at=changed,
        external_id=external_id(item.get("annotation_id"), where),
        external_updated_at=changed,
    )


# --- reading a labeling config (labeler serve) ------------------------------------------------


@dataclass(frozen=True)
class ConfigNames:
    """Where a caption goes in a labeling config: from_name and to_name of a result, and the
    task data key holding the image's URL (the Image's value without its '$')."""

    text_area: str
    image: str
    value_key: str


def caption_names(config: str) -> ConfigNames:
    """The first TextArea of a labeling config and the Image it points to (toName); an
    InputError naming what is missing, or a DOCTYPE (entity declarations are refused)."""
    _refuse_doctype(config)
    try:
        root = ET.fromstring(config)
    except ET.ParseError as exc:
        raise InputError(f"the labeling config is not well-formed XML: {exc}") from None
    images = {el.get("name"): el for el in root.iter("Image") if el.get("name")}
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
    value = (images[image].get("value") or "").strip()
    if not value.startswith("$") or len(value) < 2:
        raise InputError(f"the Image {image!r} takes no task data (value {value!r}; "
                         "expected something like \"$image\")")  # fmt: skip
    return ConfigNames(text_area=area.get("name", ""), image=image, value_key=value[1:])


def _refuse_doctype(config: str) -> None:
    parser = expat.ParserCreate()

    def refuse(*_args: object) -> None:
        raise InputError("the labeling config has a DOCTYPE or entity declaration; remove it")

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    with contextlib.suppress(expat.ExpatError):  # reported by the parse that follows
        parser.Parse(config, True)


def prediction_item(names: ConfigNames, text: str) -> dict[str, Any]:
    """A caption as one region of a prediction's (or annotation's) result."""
    return {"from_name": names.text_area, "to_name": names.image, "type": "textarea",
            "value": {"text": [text]}}  # fmt: skip


def result_text(result: object, control: str) -> str | None:
    """The control's text in a result list (several regions joined), None when it has none."""
    return _annotation_text({"result": result if isinstance(result, list) else []}, "", control)
