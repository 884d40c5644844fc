"""Hugging Face `imagefolder`: a metadata.jsonl beside the images.

`datasets.load_dataset("imagefolder", data_dir=...)` pairs each metadata line with the image
named by `file_name`, a path relative to the metadata file; absolute paths and `..` are not
allowed. So the metadata has to live in a folder that contains every exported image: the user
names that folder (typically the dataset root, or the common root of several datasets) and an
image outside it is an error naming the image. The writer cannot choose the folder itself,
because the common root is only known after the last row and the rows are streamed.

Columns: file_name, the draft as `caption` with its p_accept, confidence and log-likelihood,
the ids to trace a row back, and the review (`reviewed_caption`, `outcome`, null when none).
Images in the folder without a line are simply not part of the dataset; a repeated image gives
a repeated example, as `datasets` does with any metadata.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from labeler.atomic import atomic_output
from labeler.errors import InputError
from labeler.formats.tabular import json_text
from labeler.records import ExportResult, ExportRow

METADATA = "metadata.jsonl"


def metadata_path(dest: Path) -> Path:
    """`dest` is the folder for metadata.jsonl, or the metadata.jsonl path itself."""
    return dest if dest.name == METADATA else dest / METADATA


def metadata(row: ExportRow, root: Path) -> dict[str, Any]:
    """One metadata line; `root` is the absolute, normalised folder of the metadata file."""
    image = Path(os.path.abspath(row.abs_path))
    try:
        file_name = image.relative_to(root).as_posix()
    except ValueError:
        raise InputError(
            f"image {row.abs_path} (id {row.image_id}) is not under {root}: write the "
            "metadata into a folder that contains every exported image, e.g. the dataset root"
        ) from None
    least = row.least_certain
    return {
        "file_name": file_name,
        "caption": row.text,
        "p_accept": row.p_accept,
        "confidence": row.confidence,
        "log_likelihood": row.log_likelihood,
        "num_tokens": row.num_tokens,
        "least_certain_word": least[0] if least else None,
        "flagged": row.flagged,
        "image_id": row.image_id,
        "caption_id": row.caption_id,
        "dataset": row.dataset,
        "model": row.model_version,
        "reviewed_caption": row.review_text,
        "outcome": row.review_outcome,
    }


def write_hf(rows: Iterable[ExportRow], dest: Path, *, force: bool = False) -> ExportResult:
    """Write `metadata.jsonl` into the folder `dest` (which must contain every image)."""
    path = metadata_path(dest)
    root = Path(os.path.abspath(path.parent))
    count = 0
    with atomic_output(path, force=force) as out:
        for row in rows:
            out.write(json_text(metadata(row, root)))
            out.write("\n")
            count += 1
    return ExportResult(count=count, paths=[path])
