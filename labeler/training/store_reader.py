"""Reviewed captions from the store as training data: the corrections become a CaptionSet.

Each image contributes the caption of its newest review (by review time, else import time, then id:
NEWEST_REVIEW_FIRST, as everywhere), when that review accepted or edited a draft. How the rule that
binds a review to the draft it judged (store/drafts.py, `latest_review`) applies here: the caption
a review kept is a human caption of the image whatever the image's drafts are now, so training takes
the review's own text and never the current draft's. That is the reviewer's text for an edit (none:
no caption), and for an acceptance the text of the draft it accepted: the review's own text, or
where an older import left that empty, the judged draft's text it keeps (`draft_text`; its
`caption_id` draft while that still exists, for reviews written without it), never the text of a
later draft made over it. A newer rejection or skip therefore takes an image out: the latest word on
an image is the one that counts. Images whose file is no longer readable are skipped and counted by
the same builder the file readers use, so a vanished image never stops a training run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from labeler.errors import InputError
from labeler.store import Store
from labeler.store.reviews import reviewed_captions
from labeler.training.readers import CaptionSet, CaptionSetBuilder

KEPT = ("accepted", "edited")


def read_reviewed(
    store: Store, *, datasets: Sequence[str] | None = None, split: str = "train"
) -> CaptionSet:
    """One CaptionedImage per image whose newest review kept a caption; every image gets
    `split`. Keys are "<dataset>/<path>", so images of several datasets never collide. An
    unknown dataset is an InputError naming it."""
    builder = CaptionSetBuilder(Path("/"), keep_split=None, source=Path(store.url), fmt="store")
    with store.session() as session:
        rows = reviewed_captions(session, datasets=datasets)
    for name, root, path, path_raw, outcome, text in rows:
        if outcome not in KEPT:
            continue
        where = f"review of {name}/{path}"
        if not (text or "").strip():
            builder.skipped.add("no captions", where)
            continue
        absolute = os.fsdecode(os.path.join(root, path_raw))
        extra = {"dataset": name, "path": path}
        builder.add(absolute, [" ".join(text.split())], split, where, extra)
    result = builder.finish()
    if not result.items and not result.skipped.total:
        raise InputError("no reviewed captions in the store: import reviews first")
    for item in result.items:
        item.key = f"{item.extra['dataset']}/{item.extra['path']}"
    return result
