"""Reading reviewed captions back: our CSV / JSONL / JSON after editing, and Label Studio's exports.

A file is read a record at a time (`ReviewFile.records`), as often as asked, so that the store
can check every record in one pass and write in a second without holding the file (a million
records would take gigabytes as objects). Every error names its line or record; the store
imports all or nothing by reading the file through once before it writes. `read_reviews` is the
same as one list, for callers that want one. Files are UTF-8 (a byte-order mark is fine, as
Excel writes one); anything else is refused with the line of the first bad byte rather than
guessed at, because a wrong guess silently corrupts every accented caption. The text and JSON
layers live in streams.py.

The format is detected from the content, not the name: a JSON array is told apart by its first
element (`data` + annotations: Label Studio JSON; `reviewed_caption` / `outcome`: ours; a
`caption` or `annotator` key: Label Studio JSON_MIN), a CSV by its header (ours has
`reviewed_caption`; Label Studio's has `annotation_id`), and lines of objects are our JSONL.
CSV delimiters other than a comma (Excel writes ';' in many locales) are recognised from the
header.

A CSV that ends mid-record is refused rather than imported in part, since a file cut short (a
copy or download interrupted) otherwise reads as a shorter file whose last caption is chopped:
the reader is strict, so the end of the file inside a quoted field is an error, and so is a
last line without its line break that has fewer fields than the header when every earlier row
has them all (a complete last line may still lack the line break). Strictness also refuses a
quote followed by text in one field (`"a" b`), which the lenient reader silently mangled.

Our CSV export guards cells a spreadsheet would run as formulas with a leading single quote;
reading our CSV back takes that quote off again (rows.restore_formula), so the round trip is
exact. Label Studio's CSV is read as is. No text field may exceed rows.MAX_TEXT characters in
any format, and a CSV field over it is refused with the same message.

Whatever the format and the database, a file imports the same or fails here, before the store is
touched: text holding a NUL or a lone surrogate (which PostgreSQL, or any encoding, refuses),
ids outside 0 to rows.MAX_ID (PostgreSQL's id columns are 32-bit) and JSON nested deeper than
the parser's stack are errors naming the line or record, never a traceback from the database.

In our own formats (one row per draft), two records of the same image and draft are refused
when they say different things, naming both; an exact repeat is kept once (repeats.py: 32
bytes a record, on disk past a limit). The image is named by the record's first id of image_id, path
and content hash: within one file those name one image. Label Studio's exports are left alone:
they hold one record per annotation, and a task may have several.

Matching records to images, and refusing unknown images or paths outside a dataset, is the
store's job; here a record only has to name an image (image_id, path or content_hash).
"""

from __future__ import annotations

import csv
import itertools
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from labeler.errors import FormatError, InputError
from labeler.formats import labelstudio
from labeler.formats.repeats import ID_COLUMNS, Repeats
from labeler.formats.streams import (
    first_character,
    json_array_items,
    jsonl_items,
    open_text,
    parse_json,
)
from labeler.records import (
    MAX_TEXT,
    ReviewRecord,
    decide_outcome,
    int_field,
    restore_formula,
    text_field,
    time_field,
)

FORMATS = ("csv", "jsonl", "json", "label-studio", "label-studio-min", "label-studio-csv")
ALIASES = {
    "label-studio-json": "label-studio",
    "ls": "label-studio",
    "json-min": "label-studio-min",
    "json_min": "label-studio-min",
    "label-studio-json-min": "label-studio-min",
    "ls-csv": "label-studio-csv",
}
OUR_REVIEW_COLUMNS = ("reviewed_caption", "outcome")
LS_MARKERS = ("annotation_id", "annotator", "lead_time")
DELIMITERS = (",", ";", "\t")
ARRAY_FORMATS = (None, "json", "label-studio", "label-studio-min")  # read as a JSON array


class ReviewFile:
    """A reviewed file and its format (detected when not given); `records` reads it anew."""

    def __init__(self, path: Path, *, fmt: str | None = None) -> None:
        self.path = Path(path)
        self.name = self.path.name
        requested = _check_format_name(fmt)
        with open_text(self.path) as stream:
            head = first_character(stream)
        self._array = requested in ARRAY_FORMATS and head == "["
        self.format = requested or self._detect(head)

    @property
    def refuses_repeats(self) -> bool:
        """Whether two records of one draft must agree: our formats hold one row per draft."""
        return self.format in ("csv", "jsonl", "json")

    def records(self) -> Iterator[ReviewRecord]:
        """Every reviewed record in file order, repeats included; unreviewed ones left out."""
        convert = {
            "label-studio": labelstudio.review_from_task,
            "label-studio-min": labelstudio.review_from_flat,
            "label-studio-csv": labelstudio.review_from_flat,
        }.get(self.format, review_from_ours)
        with open_text(self.path) as stream:
            for where, item in self._items(stream):
                record = _converted(convert, where, item)
                if record is not None:
                    yield record

    def _items(self, stream: TextIO) -> Iterator[tuple[str, Any]]:
        if self._array:
            return _numbered(json_array_items(stream, self.name), self.name)
        if self.format in ("csv", "label-studio-csv"):
            return _csv_items(stream, self.path, self.format)
        if self.format == "jsonl":
            return jsonl_items(enumerate(stream, start=1), self.name)
        # A JSON flavour was asked for, but the file is not an array: an error, or nothing.
        return _numbered(_load_json(stream.read(), self.name), self.name)

    def _detect(self, head: str) -> str:
        if self._array:
            with open_text(self.path) as stream:
                first = next(json_array_items(stream, self.name), None)
            return _json_flavour(first, self.name)
        if not head:
            raise FormatError(f"{self.name}: the file is empty")
        if head == "{":
            return "jsonl"
        with open_text(self.path) as stream:
            header = _header(stream.readline())
        if any(c in header for c in OUR_REVIEW_COLUMNS):
            return "csv"
        if any(c in header for c in LS_MARKERS) or labelstudio.CONTROL in header:
            return "label-studio-csv"
        raise FormatError(
            f"{self.name} line 1: cannot tell the format: no reviewed_caption/outcome column "
            "(our CSV) and no annotation_id/caption column (Label Studio CSV)"
        )


def read_reviews(path: Path, *, fmt: str | None = None) -> list[ReviewRecord]:
    """Every reviewed row of `path`, in file order, exact repeats once; unreviewed rows are
    left out. The whole file as a list: the store reads it with ReviewFile instead."""
    source = ReviewFile(path, fmt=fmt)
    records = list(source.records())
    if not source.refuses_repeats:
        return records
    repeats = Repeats(source.name)
    for record in records:
        repeats.add(record)
    repeats.finish(records.__getitem__)
    return list(repeats.kept(records))


def detect_format(path: Path) -> str:
    """The format name of an import file (one of FORMATS)."""
    return ReviewFile(path).format


def _converted(convert: Any, where: str, item: object) -> ReviewRecord | None:
    # A record nested just under the parser's limit (or a Label Studio CSV cell holding deep
    # JSON) can still exhaust the stack while it is read or named in a message.
    try:
        return convert(where, item)
    except RecursionError:
        raise FormatError(f"{where}: nested too deeply to read") from None


def _check_format_name(fmt: str | None) -> str | None:
    if fmt is None:
        return None
    name = ALIASES.get(fmt.lower(), fmt.lower())
    if name not in FORMATS:
        raise InputError(f"unknown import format {fmt!r}; use one of {', '.join(FORMATS)}")
    return name


def _json_flavour(first: object, name: str) -> str:
    if first is None:
        return "json"  # an empty array: nothing to import in any flavour
    if isinstance(first, dict):
        if isinstance(first.get("data"), dict):
            return "label-studio"
        if any(c in first for c in OUR_REVIEW_COLUMNS):
            return "json"
        if labelstudio.CONTROL in first or any(c in first for c in LS_MARKERS):
            return "label-studio-min"
    raise FormatError(
        f"{name} record 1: cannot tell the format: neither Label Studio tasks nor records "
        "with a reviewed_caption or outcome"
    )


# --- from text to (where, item) pairs ---------------------------------------------------------


def _load_json(text: str, name: str) -> list[Any]:
    document = parse_json(text, name)
    if not isinstance(document, list):
        kind = type(document).__name__
        raise FormatError(f"{name}: expected a JSON array of records, got {kind}")
    return document


def _numbered(items: Iterable[Any], name: str) -> Iterator[tuple[str, Any]]:
    for index, item in enumerate(items, start=1):
        yield f"{name} record {index}", item


def _header(first_line: str) -> list[str]:
    first_line = first_line.rstrip("\r\n")
    return next(csv.reader([first_line], delimiter=_delimiter(first_line)), [])


def _delimiter(first_line: str) -> str:
    known = {*ID_COLUMNS, *OUR_REVIEW_COLUMNS, *LS_MARKERS, labelstudio.CONTROL}
    for delimiter in DELIMITERS:
        if known & {c.strip() for c in first_line.split(delimiter)}:
            return delimiter
    return ","


def _csv_items(stream: TextIO, path: Path, fmt: str) -> Iterator[tuple[str, dict[str, str | None]]]:
    name = path.name
    first = stream.readline()
    delimiter = _delimiter(first.rstrip("\r\n"))
    reader = csv.reader(itertools.chain([first], stream), delimiter=delimiter, strict=True)
    header = [c.strip() for c in next(reader, [])]
    _check_columns(header, name, fmt)
    restore = restore_formula if fmt == "csv" else None  # only our export guards formulas
    complete = None  # whether every row so far had every column; None before the first
    rows = _csv_rows(reader, name)
    following = next(rows, None)
    while following is not None:
        start, row = following
        following = next(rows, None)
        where = f"{name} line {start}"
        short = len(row) < len(header)
        if short and complete and following is None and _no_final_line_break(path):
            raise FormatError(
                f"{where}: the file ends after {len(row)} of {len(header)} fields (truncated?)"
            )
        complete = complete is not False and not short
        if len(row) > len(header) and any(cell.strip() for cell in row[len(header) :]):
            raise FormatError(
                f"{where}: {len(row)} fields but the header has {len(header)} "
                "(an unquoted comma in a caption?)"
            )
        if restore is not None:
            row = list(map(restore, row))
        yield where, {key: (value or None) for key, value in zip(header, row, strict=False)}


def _no_final_line_break(path: Path) -> bool:
    """Whether the file's last line, blank space aside, lacks its line break."""
    with open(path, "rb") as raw:
        end = raw.seek(0, os.SEEK_END)
        while end > 0:
            start = max(0, end - 4096)
            raw.seek(start)
            tail = raw.read(end - start).rstrip(b" \t\f\v")
            if tail:
                return not tail.endswith((b"\n", b"\r"))
            end = start
    return True


def _csv_rows(reader: Any, name: str) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of each row that is not blank."""
    limit = csv.field_size_limit(MAX_TEXT + 1)  # past the limit, so text_field names the field
    try:
        line = reader.line_num
        while True:
            start = line + 1  # a caption with newlines spans lines: name the first one
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise FormatError(_csv_error(str(exc), name, start, reader.line_num)) from None
            line = reader.line_num
            if any(cell.strip() for cell in row):
                yield start, row
    finally:
        csv.field_size_limit(limit)


def _csv_error(message: str, name: str, start: int, line: int) -> str:
    if message == "unexpected end of data":  # what the strict reader says, at the end only
        return f"{name} line {start}: the file ends inside a quoted field (truncated?)"
    if message.startswith("field larger than field limit"):
        return f"{name} line {start}: a field is longer than the limit of {MAX_TEXT} characters"
    return f"{name} line {line}: unreadable CSV: {message}"


def _check_columns(header: list[str], name: str, fmt: str) -> None:
    named = [c for c in header if c]  # blank names: empty columns a spreadsheet left
    repeated = sorted({c for c in named if named.count(c) > 1}, key=named.index)
    if repeated:
        raise FormatError(
            f"{name} line 1: column {', '.join(map(repr, repeated))} appears more than once"
        )
    missing = []
    if not any(c in header for c in ID_COLUMNS):
        missing.append(" or ".join(ID_COLUMNS))
    if fmt == "csv" and not any(c in header for c in OUR_REVIEW_COLUMNS):
        missing.append(" or ".join(OUR_REVIEW_COLUMNS))
    if missing:
        raise FormatError(f"{name} line 1: missing column {'; missing column '.join(missing)}")


# --- our own records ----------------------------------------------------------------------------


def review_from_ours(where: str, item: object) -> ReviewRecord | None:
    """A row of our CSV/JSONL/JSON export after review; None when it was left unreviewed."""
    if not isinstance(item, Mapping):
        raise FormatError(f"{where}: expected an object, got {type(item).__name__}")
    if not any(c in item for c in OUR_REVIEW_COLUMNS):
        raise FormatError(f"{where}: no reviewed_caption or outcome field")
    reviewed = text_field(item.get("reviewed_caption"), where, "reviewed_caption")
    outcome = text_field(item.get("outcome"), where, "outcome")
    draft = text_field(item.get("draft_caption"), where, "draft_caption")
    decided = decide_outcome(where, draft, reviewed, outcome)
    if decided is None:
        return None
    ids = {
        "image_id": int_field(item.get("image_id"), where, "image_id"),
        "path": text_field(item.get("path"), where, "path") or None,
        "content_hash": text_field(item.get("content_hash"), where, "content_hash") or None,
    }
    if not any(ids.values()):
        raise FormatError(f"{where}: no image_id, path or content_hash to match the image")
    return ReviewRecord(
        where=where,
        **ids,
        caption_id=int_field(item.get("caption_id"), where, "caption_id"),
        draft_text=draft,
        reviewed_text=decided[0],
        outcome=decided[1],
        reviewer=text_field(item.get("reviewer"), where, "reviewer") or None,
        reviewed_at=time_field(item.get("reviewed_at"), where, "reviewed_at"),
    )
