"""/webhook's work: Label Studio's annotation events to reviews in the store.

Label Studio posts every event of the project to the backend's /webhook once the backend is
connected (it registers the webhook itself). ANNOTATION_CREATED and ANNOTATION_UPDATED carry
the annotation, its task, the project and the prediction the annotator saw. Each becomes one
Label Studio review, exactly as importing an export holding that annotation would make it:
- skipped when the annotation was cancelled; rejected when its caption was emptied; accepted
  when its caption is the text the annotator was shown (the task's `draft_caption` when the
  task came from `labeler export`, else the prediction's text), edited otherwise;
- the reviewer is the annotator: the user's e-mail, asked of Label Studio when serve knows its
  URL and a key (LABEL_STUDIO_URL, or what /setup sent), else the user id the event carries; the
  time is the annotation's update time;
- matched to the image as an import matches a record: by labeler's own task fields when the
  task came from an export, else by the file its image URL names (task_images.py; a file under
  the document root not yet in the store is registered first), else by content hash;
- one review per annotation and image: the same event again is already stored, an update with
  a newer time replaces the review in place.
ANNOTATIONS_DELETED (ANNOTATION_DELETED too) withdraws those annotations' reviews. Every other
action (tasks created, the project updated, START_TRAINING) is acknowledged and left alone. An
event that cannot be stored (no image matches, a malformed annotation) is answered with the
reason, and the store is unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labeler.errors import FormatError, InputError
from labeler.formats import labelstudio as ls
from labeler.review.importer import import_records
from labeler.review.task_images import Missed, Place, Sources, annotator, image_value, place
from labeler.store import Store
from labeler.store import reviews as review_store

log = logging.getLogger(__name__)

SAVED = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
DELETED = ("ANNOTATIONS_DELETED", "ANNOTATION_DELETED")
OWN_FIELDS = ("image_id", "path", "content_hash")  # a task from `labeler export` names its image


@dataclass(frozen=True)
class EventResult:
    action: str
    outcome: str  # added, updated, already, withdrawn, ignored, refused
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "outcome": self.outcome, "detail": self.detail}


def handle_event(
    store: Store, event: object, body: bytes, *, sources: Sources,
    register: Callable[[Path], str | Missed] | None = None,
) -> EventResult:  # fmt: skip
    """Store what one webhook delivery says. `register` registers a local file in the store
    before it is matched and names the dataset holding it (the predictor's: a task annotated
    before any prediction still finds its image, and a file two datasets hold is matched in
    the one serve uses for it)."""
    if not isinstance(event, Mapping) or not isinstance(event.get("action"), str):
        return EventResult("?", "refused", "the body is not a Label Studio event (no action)")
    action = event["action"]
    try:
        if action in DELETED:
            return _withdraw(store, action, event)
        if action in SAVED:
            return _save(store, action, event, body, sources, register)
    except (FormatError, InputError) as exc:
        return EventResult(action, "refused", str(exc))
    return EventResult(action, "ignored")


def _withdraw(store: Store, action: str, event: Mapping[str, Any]) -> EventResult:
    items = event.get("annotations")
    if items is None and isinstance(event.get("annotation"), Mapping):
        items = [event["annotation"]]
    if not isinstance(items, list):
        raise FormatError(f"{action}: no list of annotations")
    names = [ls.external_id(a.get("id") if isinstance(a, Mapping) else a, action) for a in items]
    prefixes = [f"{name}:image:" for name in names if name]
    with store.write() as session:
        gone = review_store.withdraw_reviews(session, prefixes)
    return EventResult(action, "withdrawn", f"{gone} reviews")


def _save(store, action, event, body, sources, register) -> EventResult:  # type: ignore[no-untyped-def]
    annotation, task = event.get("annotation"), event.get("task")
    if not isinstance(annotation, Mapping) or not isinstance(task, Mapping):
        raise FormatError(f"{action}: the event has no annotation and task objects")
    project = event.get("project")
    config = project.get("label_config") if isinstance(project, Mapping) else None
    if not isinstance(config, str):
        raise FormatError(f"{action}: the event's project has no label_config")
    names = ls.caption_names(config)
    data = dict(task.get("data") or {})
    where = f"{action} of annotation {annotation.get('id')} (task {task.get('id')})"
    datasets = None
    if not any(data.get(k) not in (None, "") for k in OWN_FIELDS):
        found = _file(task, names, sources)
        if isinstance(found, Missed):
            raise FormatError(f"{where}: {found.reason}")
        if register is not None and _is_file(found.path):
            holder = register(found.path)
            if isinstance(holder, Missed):
                raise FormatError(f"{where}: {holder.reason}")
            datasets = [holder]
        data["path"] = str(found.path)
    if data.get("draft_caption") in (None, ""):
        shown = annotation.get("prediction")
        if isinstance(shown, Mapping):
            data["draft_caption"] = ls.result_text(shown.get("result"), names.text_area)
    item = {"data": data, "annotations": [dict(annotation)]}
    record = ls.review_from_task(where, item, control=names.text_area)
    if record is None:  # an annotation with nothing in it at all
        return EventResult(action, "ignored", "nothing to store")
    if record.reviewer is not None:
        record = dataclasses.replace(record, reviewer=annotator(record.reviewer, sources))
    digest = hashlib.sha256(body).hexdigest()
    result = import_records(
        store, [record], source="label-studio webhook", digest=digest, datasets=datasets
    )
    outcome = "added" if result.added else "updated" if result.updated else "already"
    return EventResult(action, outcome, ", ".join(sorted(result.by_outcome)))


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long, a folder nobody may read: matched by path alone
        return False


def _file(task: Mapping[str, Any], names: ls.ConfigNames, sources: Sources) -> Place | Missed:
    url = image_value(task, names.value_key)
    if isinstance(url, Missed):
        return url
    return place(url, sources, task_id=task.get("id"))
