"""CSV, JSON Lines and JSON exports: one flat record per draft, made for a review round trip.

All three share one record layout (`columns`), so a reviewer can use whichever their tool opens
and `labeler import` reads them back the same way. The reviewer-facing columns come first:
the draft, an empty `reviewed_caption` and an empty `outcome` beside it (filled when a review
already exists), then the calibrated `p_accept` and the raw confidence. The ids used to match
the file back to the store (image_id, path, content_hash, caption_id) ride along.

CSV choices, for spreadsheets: UTF-8 with a byte-order mark, because Excel reads a CSV without
one in the local code page and mangles every accent (pandas and the csv module skip the mark);
RFC 4180 quoting (commas, quotes and newlines inside a caption are quoted, quotes doubled);
CRLF line ends; text that a spreadsheet would run as a formula (starting with =, +, -, @, tab
or carriage return) prefixed with a single quote, as OWASP advises, which `labeler import` takes
off again (labeler/records.py has the exact, reversible rule); booleans as `true`/`false`
(pandas reads them as booleans); the per-token log-probabilities as a JSON array in one cell.
Scores are written in full (repr) so that they round-trip exactly; only the per-token
log-probabilities are rounded, to 4 decimals.

The JSON export is a single array, written one element at a time: none of the three holds more
than one chunk of rows in memory. Scores that are not finite become null in JSON, which has no
NaN.

Speed (a million rows in seconds): rows arrive as DraftChunks and are formatted a column at a
time, each column through as few C-level calls as will do: a text column needing no CSV quotes
passes whole, orjson escapes a column of JSON strings and writes a column of numbers (as
Python's str and repr do, except for the rare values it writes otherwise, whose columns fall
back to Python), and `str.join` or one `%` template per record joins the cells. Every fast path
writes the bytes that formatting one value at a time writes; the tests compare the two.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from json.encoder import encode_basestring  # type: ignore[attr-defined] - the C version
from math import isfinite
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from labeler.atomic import atomic_output
from labeler.records import (
    DraftChunk,
    ExportResult,
    ExportRow,
    collector_paused,
    defuse_formula,
    draft_chunks,
    finite_or_none,
)

REVIEW_COLUMNS = ("reviewed_caption", "outcome")
LEADING = ("image_id", "dataset", "path", "draft_caption", *REVIEW_COLUMNS)
SCORES = (
    "p_accept",
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
        for name in ("caption", "p_accept", "confidence", "log_likelihood")
    ]
    return [*LEADING, *SCORES, *alternatives, *TRAILING]


class _Cells:
    """How one format writes each kind of column; a method takes and returns a whole column."""

    def text(self, values: Sequence[Any]) -> Sequence[str]:
        raise NotImplementedError

    def number(self, values: Sequence[Any]) -> Sequence[str]:
        raise NotImplementedError

    def json(self, values: Sequence[str]) -> Sequence[str]:
        """Text that is already JSON (the formatted log-probabilities)."""
        raise NotImplementedError

    def bool(self, values: Sequence[Any]) -> list[str]:
        return ["true" if value else "false" for value in values]


def record_columns(chunk: DraftChunk, n_alternatives: int, cells: _Cells) -> list[Sequence[Any]]:
    """The chunk's cells in `columns` order, one sequence per column, written by `cells`."""
    text, number = cells.text, cells.number
    words, lowest = chunk.least_certain()
    record = [
        number(chunk.image_id),
        text(chunk.dataset),
        text(chunk.path),
        text(chunk.text),
        text(chunk.review_text),
        text(chunk.review_outcome),
        number(chunk.p_accept),
        number(chunk.confidence),
        text(words),
        number(lowest),
        cells.bool(chunk.flagged()),
        number(chunk.log_likelihood),
        number(chunk.num_tokens),
        number(chunk.margin),
        cells.bool(chunk.finished),
        cells.bool(chunk.repeated_ngram),
        cells.bool(chunk.has_unknown),
        cells.json(chunk.memo("logprobs_json", _logprobs_json)),
    ]
    for i in range(n_alternatives):
        alternatives = [alts[i] if i < len(alts) else None for alts in chunk.alternatives]
        record += (
            text([alt and alt.text for alt in alternatives]),
            number([alt and alt.p_accept for alt in alternatives]),
            number([alt and alt.confidence for alt in alternatives]),
            number([alt and alt.log_likelihood for alt in alternatives]),
        )
    record += (
        number(chunk.caption_id),
        text(chunk.content_hash),
        text(chunk.abs_path),
        number(chunk.width),
        number(chunk.height),
        text(chunk.model_name),
        text(chunk.model_hash),
        text(chunk.settings_key),
        text(chunk.reviewer),
        text([when.isoformat() if when else None for when in chunk.reviewed_at]),
    )
    return record


def prepare(chunk: DraftChunk) -> None:
    """Work out the chunk's derived columns ahead, in the export's reader process: the least
    certain words and the log-probabilities' JSON are half of the cost left to the writer."""
    chunk.least_certain()
    chunk.memo("logprobs_json", _logprobs_json)


def _logprobs_json(chunk: DraftChunk) -> list[str]:
    return logprobs_texts(chunk.token_logprobs)


_LOGPROBS_FORMATS: dict[int, str] = {}


def logprobs_text(logprobs: list[float]) -> str:
    """The per-token log-probabilities as a JSON array, to 4 decimal places.

    They are there to show which word the model was unsure of, and 1e-4 nats is finer than
    anyone reads; the full-precision repr of a dozen floats was a third of the cost of a row.
    (log_likelihood, p_accept, confidence and the least certain log-probability are kept in full.)
    """
    template = _LOGPROBS_FORMATS.get(len(logprobs))
    if template is None:
        template = "[" + ", ".join(["%.4f"] * len(logprobs)) + "]"
        _LOGPROBS_FORMATS[len(logprobs)] = template
    text = template % tuple(logprobs)
    if "n" in text:  # 'inf' or 'nan', which JSON cannot hold
        return json_text([finite_or_none(v) for v in logprobs])
    return text


def logprobs_texts(column: Sequence[Sequence[float]]) -> list[str]:
    """`logprobs_text` of every row of a chunk, the same text at two thirds of the cost.

    %.4f is a round to 4 decimals and a print, and both can be done a column at a time: numpy
    rounds |x| * 1e4 to an integer k (exactly as %.4f does unless the product lies within 1e-6
    of a tie), and orjson prints the double nearest to (10k + 1) / 1e5 with sign of x: that is
    the 4 decimals followed by a 1, which is then dropped; the last value of a row ends in 2
    instead, which marks where rows end. A chunk with an empty row, a value that is not finite,
    huge or near a tie goes the slow way; tests/formats/test_formats_tabular.py compares both.
    """
    lengths = list(map(len, column))
    try:
        values = np.fromiter(chain.from_iterable(column), np.float64, sum(lengths))
    except (TypeError, ValueError):  # not numbers
        return list(map(logprobs_text, column))
    scaled = np.abs(values) * 1e4
    if not (all(lengths) and np.isfinite(scaled).all() and (scaled < 2.0**33).all()):
        return list(map(logprobs_text, column))
    if not (np.abs(scaled - np.floor(scaled) - 0.5) > 1e-6).all():  # near a tie
        return list(map(logprobs_text, column))
    digits = np.rint(scaled) * 10 + 1
    digits[np.cumsum(lengths) - 1] += 1  # each row's last value ends in 2
    marked = np.copysign(digits / 1e5, values)
    text = orjson.dumps(marked, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    if "e" in text:  # printed in exponent form
        return list(map(logprobs_text, column))
    text = (text[1:-1] + ",").replace("2,", "]\n[").replace("1,", ", ")
    return ("[" + text[:-2]).split("\n")


def number_texts(values: Sequence[Any], fallback: Callable[[Any], str]) -> Sequence[str]:
    """Each number as str() writes it (repr for floats), for a whole column in one orjson call.

    orjson writes integers and the shortest repr of floats as Python does, except in exponent
    form (below 1e-4 it writes 1e-5 or 0.00001 for 1e-05) and for what is not a finite number
    (null, true...): a column holding any of those goes through `fallback` value by value.
    (tests/formats/test_formats_tabular.py holds orjson to this on random doubles.)
    """
    if not values:
        return []
    try:
        text = orjson.dumps(values).decode()
    except TypeError:  # an integer beyond 64 bits, or not a number at all
        return list(map(fallback, values))
    if "e" in text or "n" in text or "0.0000" in text:
        return list(map(fallback, values))
    return text[1:-1].split(",")


def csv_cell(value: Any) -> str:
    """One RFC 4180 cell: text with a comma, quote or line break is quoted, quotes doubled; text
    a spreadsheet would run as a formula gets a leading single quote first (`defuse_formula`)."""
    if value.__class__ is str:
        value = defuse_formula(value)
        if '"' in value or "," in value or "\n" in value or "\r" in value:
            return '"' + value.replace('"', '""') + '"'
        return value
    return "" if value is None else str(value)  # ints, and floats in full (the shortest repr)


# Where a cell of a column joined with NULs (and one more in front) may start like a formula; a
# NUL inside a value can only make a false alarm, and then csv_cell looks at each value.
_FORMULA_CELL = re.compile("\0'*[=+\\-@\t\r]")


class _CsvCells(_Cells):
    """Cells as csv_cell writes them; a text column needing neither quotes nor a formula guard
    passes through whole.

    Hand-rolled: the csv module costs twice as much, as it looks at text a character at a time.
    """

    def text(self, values: Sequence[Any]) -> Sequence[str]:
        if None in values:
            values = ["" if value is None else value for value in values]
        try:
            joined = "\0".join(values)
        except TypeError:  # not text
            return list(map(csv_cell, values))
        if '"' in joined or "," in joined or "\n" in joined or "\r" in joined:
            return list(map(csv_cell, values))
        if _FORMULA_CELL.search("\0" + joined):
            return list(map(csv_cell, values))
        return values

    def number(self, values: Sequence[Any]) -> Sequence[str]:
        return number_texts(values, csv_cell)

    def json(self, values: Sequence[str]) -> Sequence[str]:
        # JSON of numbers and nulls: no quotes or line breaks, so a comma is all to look for.
        return ['"' + value + '"' if "," in value else value for value in values]


def write_csv(
    rows: Iterable[ExportRow], dest: Path, *, force: bool = False, n_best: int = 1
) -> ExportResult:
    """Write a spreadsheet-ready CSV (see the module docstring for the choices)."""
    n_alt = max(n_best, 1) - 1
    count = 0
    cells = _CsvCells()
    with (
        atomic_output(dest, force=force, encoding="utf-8-sig", newline="") as out,
        collector_paused(),
    ):
        out.write(",".join(columns(n_best)) + "\r\n")
        for chunk in draft_chunks(rows):
            record = record_columns(chunk, n_alt, cells)
            out.write("\r\n".join(map(",".join, zip(*record, strict=True))))
            out.write("\r\n")
            count += len(chunk)
    return ExportResult(count=count, paths=[dest])


# One encoder for the whole export: json.dumps with options builds a new one for every call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


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
    return json_text(value)


class _JsonCells(_Cells):
    """Each cell as its JSON text; the fast paths give up on a column holding anything odd."""

    def text(self, values: Sequence[Any]) -> Sequence[str]:
        """orjson escapes text as json does (the tests try every code point), and outside
        strings '","' can only join two of them: a column splits back into its cells."""
        if values and values.count(values[0]) == len(values):  # model, dataset: one value
            return [_json_value(values[0])] * len(values)
        if None in values or values[0].__class__ is not str:
            return list(map(_json_value, values))
        try:
            texts = orjson.dumps(values).decode()[1:-1].replace('","', '"\0"').split("\0")
        except TypeError:  # a name that is not valid Unicode (surrogate escapes)
            return list(map(_json_value, values))
        if len(texts) != len(values):  # something other than text in the column
            return list(map(_json_value, values))
        return texts

    def number(self, values: Sequence[Any]) -> Sequence[str]:
        return number_texts(values, _json_value)

    def json(self, values: Sequence[str]) -> Sequence[str]:
        return values


def json_records(rows: Iterable[ExportRow], n_best: int) -> Iterator[list[str]]:
    """Each chunk of rows as one-line JSON objects with the `columns` keys.

    Assembled from pre-encoded keys rather than by json.dumps of a dict: the cells of a column
    are encoded together, and the log-probabilities go in already formatted.
    """
    keys = [json.dumps(key).replace("%", "%%") + ": " for key in columns(n_best)]
    n_alt = max(n_best, 1) - 1
    cells = _JsonCells()
    for chunk in draft_chunks(rows):
        template, varying = _record_template(keys, record_columns(chunk, n_alt, cells))
        if varying:
            yield list(map(template.__mod__, zip(*varying, strict=True)))
        else:
            yield [template % ()] * len(chunk)


def _record_template(keys: list[str], record: list[Sequence[str]]) -> tuple[str, list]:  # type: ignore[type-arg]
    """A %-template of one JSON object with the chunk's constant cells written in (the model,
    usually the dataset, the absent reviews: half the cells), and the columns left to fill."""
    parts, varying = [], []
    for key, cells in zip(keys, record, strict=True):
        if cells.count(cells[0]) == len(cells):
            parts.append(key + cells[0].replace("%", "%%"))
        else:
            parts.append(key + "%s")
            varying.append(cells)
    return "{" + ", ".join(parts) + "}", varying


def write_jsonl(
    rows: Iterable[ExportRow], dest: Path, *, force: bool = False, n_best: int = 1
) -> ExportResult:
    """One JSON object per line, UTF-8 without a byte-order mark."""
    count = 0
    with atomic_output(dest, force=force) as out, collector_paused():
        for lines in json_records(rows, n_best):
            if lines:
                out.write("\n".join(lines))
                out.write("\n")
            count += len(lines)
    return ExportResult(count=count, paths=[dest])


def write_json(
    rows: Iterable[ExportRow], dest: Path, *, force: bool = False, n_best: int = 1
) -> ExportResult:
    """A JSON array of the same objects, one per line, streamed a chunk at a time."""
    count = 0
    with atomic_output(dest, force=force) as out, collector_paused():
        out.write("[")
        for lines in json_records(rows, n_best):
            if lines:
                out.write(",\n" if count else "\n")
                out.write(",\n".join(lines))
            count += len(lines)
        out.write("\n]\n")
    return ExportResult(count=count, paths=[dest])
