"""CSV, JSON Lines and JSON exports: one flat record per draft, made for a review round trip.

All three share one record layout (`columns`), so a reviewer can use whichever their tool opens
and `labeler import` reads them back the same way. The reviewer-facing columns come first:
the draft, an empty `reviewed_caption` and an empty `outcome` beside it (filled when a review
already exists), then the confidence. The ids used to match the file back to the store
(image_id, path, content_hash, caption_id) ride along.

CSV choices, for spreadsheets: UTF-8 with a byte-order mark, because Excel reads a CSV without
one in the local code page and mangles every accent (pandas and the csv module skip the mark);
RFC 4180 quoting (commas, quotes and newlines inside a caption are quoted, quotes doubled);
CRLF line ends; booleans as `true`/`false` (pandas reads them as booleans); the per-token
log-probabilities as a JSON array in one cell. Scores are written in full (repr) so that they
round-trip exactly; only the per-token log-probabilities are rounded, to 4 decimals.

The JSON export is a single array, written one element at a time: neither it nor the others
ever hold more than one row in memory. Scores that are not finite become null in JSON, which
has no NaN.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from json.encoder import encode_basestring  # type: ignore[attr-defined] - the C version
from math import isfinite
from pathlib import Path
from typing import Any

from labeler.formats.atomic import atomic_output
from labeler.formats.rows import ExportResult, ExportRow, finite_or_none

REVIEW_COLUMNS = ("reviewed_caption", "outcome")
LEADING = ("image_id", "dataset", "path", "draft_caption", *REVIEW_COLUMNS)
SCORES = (
    "confidence",
    "least_certain_word",
    "least_certain_logprob",
    "flagged",
    "log_likelihood",
    "num_tokens",
    "margin",
    "finished",
    "repeated_ngram",
    "has_unknown",
    "token_logprobs",
)
TRAILING = (
    "caption_id",
    "content_hash",
    "abs_path",
    "width",
    "height",
    "model",
    "model_hash",
    "settings_key",
    "reviewer",
    "reviewed_at",
)


def columns(n_best: int = 1) -> list[str]:
    """The record layout; `n_best` K adds the K-1 alternatives as alt<i>_* columns."""
    alternatives = [
        f"alt{i}_{name}"
        for i in range(1, max(n_best, 1))
        for name in ("caption", "confidence", "log_likelihood")
    ]
    return [*LEADING, *SCORES, *alternatives, *TRAILING]


def record_values(row: ExportRow, n_alternatives: int) -> list[Any]:
    """The row's values in `columns` order, as Python values (None for a missing one)."""
    least = row.least_certain
    values: list[Any] = [
        row.image_id,
        row.dataset,
        row.path,
        row.text,
        row.review_text,
        row.review_outcome,
        row.confidence,
        least[0] if least else None,
        least[1] if least else None,
        row.flagged,
        row.log_likelihood,
        row.num_tokens,
        row.margin,
        row.finished,
        row.repeated_ngram,
        row.has_unknown,
        row.token_logprobs,
    ]
    alternatives = row.alternatives
    for i in range(n_alternatives):
        if i < len(alternatives):
            alt = alternatives[i]
            values += (alt.text, alt.confidence, alt.log_likelihood)
        else:
            values += (None, None, None)
    values += (
        row.caption_id,
        row.content_hash,
        row.abs_path,
        row.width,
        row.height,
        row.model_name,
        row.model_hash,
        row.settings_key,
        row.reviewer,
        row.reviewed_at.isoformat() if row.reviewed_at else None,
    )
    return values


# One encoder for the whole export: json.dumps with options builds a new one for every call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)
_BOOLEAN_COLUMNS = tuple(
    LEADING.index(c) if c in LEADING else len(LEADING) + SCORES.index(c)
    for c in ("flagged", "finished", "repeated_ngram", "has_unknown")
)
_LOGPROBS_COLUMN = len(LEADING) + SCORES.index("token_logprobs")
_LOGPROBS_FORMATS: dict[int, str] = {}


def logprobs_text(logprobs: list[float]) -> str:
    """The per-token log-probabilities as a JSON array, to 4 decimal places.

    They are there to show which word the model was unsure of, and 1e-4 nats is finer than
    anyone reads; the full-precision repr of a dozen floats was a third of the cost of a row.
    (log_likelihood, confidence and the least certain log-probability are kept in full.)
    """
    template = _LOGPROBS_FORMATS.get(len(logprobs))
    if template is None:
        template = "[" + ", ".join(["%.4f"] * len(logprobs)) + "]"
        _LOGPROBS_FORMATS[len(logprobs)] = template
    text = template % tuple(logprobs)
    if "n" in text:  # 'inf' or 'nan', which JSON cannot hold
        return json_text([finite_or_none(v) for v in logprobs])
    return text


def csv_values(row: ExportRow, n_alternatives: int) -> list[Any]:
    """The CSV cells: booleans as true/false, the log-probabilities as a JSON array.

    Patched in place rather than by a call per cell, which would cost a third of the row.
    """
    values = record_values(row, n_alternatives)
    for index in _BOOLEAN_COLUMNS:
        values[index] = "true" if values[index] else "false"
    values[_LOGPROBS_COLUMN] = logprobs_text(values[_LOGPROBS_COLUMN])
    return values


def csv_line(values: list[Any]) -> str:
    """One RFC 4180 record: a text cell with a comma, quote or line break is quoted, quotes doubled.

    Hand-rolled because the csv module costs three times as much per row here, and at a
    million rows that is most of the export.
    """
    cells = []
    for value in values:
        if value.__class__ is str:
            if '"' in value or "," in value or "\n" in value or "\r" in value:
                value = '"' + value.replace('"', '""') + '"'
            cells.append(value)
        elif value is None:
            cells.append("")
        else:
            cells.append(str(value))  # ints, and floats in full (str is the shortest repr)
    return ",".join(cells) + "\r\n"


BATCH = 512  # rows per write call


def write_csv(
    rows: Iterable[ExportRow], dest: Path, *, force: bool = False, n_best: int = 1
) -> ExportResult:
    """Write a spreadsheet-ready CSV (see the module docstring for the choices)."""
    n_alt = max(n_best, 1) - 1
    count = 0
    with atomic_output(dest, force=force, encoding="utf-8-sig", newline="") as out:
        out.write(csv_line(columns(n_best)))
        batch: list[str] = []
        for row in rows:
            batch.append(csv_line(csv_values(row, n_alt)))
            if len(batch) == BATCH:
                out.write("".join(batch))
                batch.clear()
            count += 1
        out.write("".join(batch))
    return ExportResult(count=count, paths=[dest])


def json_text(record: Any) -> str:
    """One line of JSON; a NaN or infinite score becomes null, since JSON has neither."""
    try:
        return _ENCODER.encode(record)
    except ValueError:  # a NaN or infinite score somewhere: rare, so only then pay for a scan
        return json.dumps(_finite(record), ensure_ascii=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


class _Raw(str):
    """Text that is already JSON (the formatted log-probabilities)."""


def _json_value(value: Any) -> str:
    kind = value.__class__
    if kind is str:
        return encode_basestring(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is float:
        return repr(value) if isfinite(value) else "null"
    if kind is int:
        return str(value)
    if kind is _Raw:
        return value
    return json_text(value)


def json_records(rows: Iterable[ExportRow], n_best: int) -> Iterator[str]:
    """Each row as a one-line JSON object with the `columns` keys, lazily.

    Assembled from pre-encoded keys rather than by json.dumps of a dict: a third faster,
    and the log-probabilities can go in already formatted.
    """
    keys = columns(n_best)
    prefixes = ["{" + json.dumps(keys[0]) + ": "] + [", " + json.dumps(k) + ": " for k in keys[1:]]
    n_alt = max(n_best, 1) - 1
    for row in rows:
        values = record_values(row, n_alt)
        values[_LOGPROBS_COLUMN] = _Raw(logprobs_text(values[_LOGPROBS_COLUMN]))
        parts = []
        for prefix, value in zip(prefixes, values, strict=True):
            parts.append(prefix)
            parts.append(_json_value(value))
        parts.append("}")
        yield "".join(parts)


def write_jsonl(
    rows: Iterable[ExportRow], dest: Path, *, force: bool = False, n_best: int = 1
) -> ExportResult:
    """One JSON object per line, UTF-8 without a byte-order mark."""
    count = 0
    with atomic_output(dest, force=force) as out:
        for line in json_records(rows, n_best):
            out.write(line)
            out.write("\n")
            count += 1
    return ExportResult(count=count, paths=[dest])


def write_json(
    rows: Iterable[ExportRow], dest: Path, *, force: bool = False, n_best: int = 1
) -> ExportResult:
    """A JSON array of the same objects, one per line, streamed element by element."""
    count = 0
    with atomic_output(dest, force=force) as out:
        out.write("[")
        for line in json_records(rows, n_best):
            out.write(",\n" if count else "\n")
            out.write(line)
            count += 1
        out.write("\n]\n")
    return ExportResult(count=count, paths=[dest])
