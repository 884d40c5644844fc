"""COCO captions: a results file of drafts, and optionally a ground truth of reviewed captions.

Results are a bare list with exactly one {"image_id", "caption"} per image: the COCO caption
scorers break on two results for one image, so when rows repeat an image (several models or
decoding settings) the draft with the highest p_accept wins, the first one on a tie.

The ground truth holds the reviewed captions: accepted drafts as they were, edited ones as the
reviewer wrote them; rejected, skipped and unreviewed drafts have no reference and are left
out, with their images. Because `COCO.loadRes` refuses a result whose image is not in the
ground truth, results are then limited to the images the ground truth has, so that the pair
scores as is. An empty ground truth is refused: there is nothing to score against.

Unlike the other writers this one keeps one small entry per image in memory until the end,
since the best draft of an image is only known once every row has been seen; pycocotools loads
both files whole anyway, so this sets no new limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from labeler.atomic import atomic_outputs
from labeler.errors import InputError
from labeler.formats.tabular import json_text
from labeler.records import ExportResult, ExportRow, normalise_text


def reference_text(row: ExportRow) -> str | None:
    """The reviewed caption usable as a reference, or None when the draft has none."""
    if row.review_outcome == "accepted":
        return normalise_text(row.review_text or row.text)
    if row.review_outcome == "edited" and row.review_text:
        return normalise_text(row.review_text)
    return None


class _GroundTruth:
    """Images and reference captions gathered from the rows (one reference per distinct text)."""

    def __init__(self) -> None:
        self.images: dict[int, dict[str, Any]] = {}
        self.references: dict[tuple[int, str], None] = {}  # ordered, de-duplicated

    def add(self, row: ExportRow) -> None:
        text = reference_text(row)
        if text is None:
            return
        if row.image_id not in self.images:
            image: dict[str, Any] = {"id": row.image_id, "file_name": row.path}
            if row.width is not None and row.height is not None:
                image.update(width=row.width, height=row.height)
            self.images[row.image_id] = image
        self.references[(row.image_id, text)] = None

    def write(self, out) -> None:
        out.write('{"images": [')
        _write_items(out, self.images.values())
        out.write('],\n"annotations": [')
        annotations = (
            {"id": number, "image_id": image_id, "caption": text}
            for number, (image_id, text) in enumerate(self.references, start=1)
        )
        _write_items(out, annotations)
        out.write("]}\n")


def _write_items(out, items: Iterable[dict[str, Any]]) -> None:
    for number, item in enumerate(items):
        out.write(",\n" if number else "\n")
        out.write(json_text(item))


def write_coco(
    rows: Iterable[ExportRow],
    dest: Path,
    *,
    force: bool = False,
    ground_truth: Path | None = None,
) -> ExportResult:
    """Write the results to `dest` and, if asked, the ground truth to `ground_truth`.

    `count` is the number of results written.
    """
    best: dict[int, tuple[float, str]] = {}
    truth = _GroundTruth() if ground_truth is not None else None
    dests = [dest] if ground_truth is None else [dest, ground_truth]
    with atomic_outputs(dests, force=force) as outs:
        for row in rows:
            kept = best.get(row.image_id)
            if kept is None or row.p_accept > kept[0]:
                best[row.image_id] = (row.p_accept, row.text)
            if truth is not None:
                truth.add(row)
        if truth is not None:
            if not truth.images:
                raise InputError(
                    "no accepted or edited reviews among the exported drafts: "
                    "the COCO ground truth would be empty"
                )
            best = {i: v for i, v in best.items() if i in truth.images}
            truth.write(outs[1])
        outs[0].write("[")
        _write_items(outs[0], ({"image_id": i, "caption": v[1]} for i, v in best.items()))
        outs[0].write("\n]\n")
    return ExportResult(count=len(best), paths=dests)
