"""File formats: writers that stream `ExportRow`s out, parsers that read `ReviewRecord`s in.

Pure format code over the dataclasses of `rows`; nothing here touches the store. Every writer
is `write_<format>(rows, dest, *, force=False, ...) -> ExportResult`, streams its rows and
writes atomically (`atomic`). `read_reviews` reads any supported import file.
"""

from labeler.formats.coco import write_coco
from labeler.formats.cvat import write_cvat
from labeler.formats.hf import write_hf
from labeler.formats.labelstudio import write_label_studio
from labeler.formats.reviews import FORMATS as IMPORT_FORMATS
from labeler.formats.reviews import detect_format, read_reviews
from labeler.formats.sidecar import write_sidecar
from labeler.formats.tabular import write_csv, write_json, write_jsonl
from labeler.records import (
    OUTCOMES,
    Alternative,
    ExportResult,
    ExportRow,
    ReviewRecord,
)

WRITERS = {
    "csv": write_csv,
    "jsonl": write_jsonl,
    "json": write_json,
    "label-studio": write_label_studio,
    "coco": write_coco,
    "hf": write_hf,
    "sidecar": write_sidecar,
    "cvat": write_cvat,
}
"""Export format name -> writer; each takes its own options as keywords (see its docstring)."""

__all__ = [
    "IMPORT_FORMATS",
    "OUTCOMES",
    "WRITERS",
    "Alternative",
    "ExportResult",
    "ExportRow",
    "ReviewRecord",
    "detect_format",
    "read_reviews",
    "write_coco",
    "write_csv",
    "write_cvat",
    "write_hf",
    "write_json",
    "write_jsonl",
    "write_label_studio",
    "write_sidecar",
]
