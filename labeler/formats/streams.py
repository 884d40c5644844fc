"""Reading an import file a piece at a time: UTF-8 text, and the elements of a JSON array.

A reviewed file may hold a million records, so nothing here holds more than a block of text and
the record being read. `open_text` gives the file as text with its lines ending as written (what
the csv module asks for); a byte that is not UTF-8 becomes an error naming its line and offset in
the file, found by a second, byte-level scan, since the text layer only knows that its current
block failed.

`json_array_items` yields the elements of a JSON array one at a time with the json module's own
decoder (`raw_decode` from a position in a block), so every element is exactly what json.loads
would give, with its limits: nesting beyond the stack and numbers too long to convert are errors
as before, and a bad document's message names the line and column json.loads would. When an
element runs past the block, the decoder fails at the end of the text; the block then grows and
the element is decoded again (the block doubles, so a 10 MB caption costs a few retries, not one
per block). A failure well before the end of the text is the file's own, reported at once.
"""

from __future__ import annotations

import codecs
import io
import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from labeler.errors import FormatError, InputError

BLOCK = 1 << 20  # characters (text) or bytes (scans) read at a time
_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's blank space
_DECODER = json.JSONDecoder()
_CUT_SLACK = 8  # a value cut at the end fails this close to it ('tru', '\u12', '1.')


@contextmanager
def open_text(path: Path) -> Iterator[TextIO]:
    """`path` as UTF-8 text without its byte-order mark, lines ending as written."""
    if path.is_dir():
        raise InputError(f"{path} is a folder; name the reviewed file inside it")
    try:
        raw = open(path, "rb")  # noqa: SIM115 (closed by the wrapper)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    with io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as stream:
        try:
            yield stream
        except UnicodeDecodeError:
            raise encoding_error(path) from None


def encoding_error(path: Path) -> FormatError:
    """The error for the first byte of `path` that is not UTF-8: its line and offset."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    start = lines = 0  # offset of the block in the file; line breaks before it
    with open(path, "rb") as raw:
        while True:
            block = raw.read(BLOCK)
            skip = len(codecs.BOM_UTF8) if start == 0 and block.startswith(codecs.BOM_UTF8) else 0
            held = len(decoder.getstate()[0])  # bytes of a character begun in the last block
            try:
                decoder.decode(block[skip:], not block)
            except UnicodeDecodeError as exc:
                offset = start + skip - held + exc.start
                line = lines + block.count(b"\n", 0, max(offset - start, 0)) + 1
                return FormatError(
                    f"{path.name} line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}"
                    f" at offset {offset}); save the file as UTF-8 (in Excel: CSV UTF-8)"
                )
            if not block:
                return FormatError(f"{path.name}: not UTF-8 text")
            start += len(block)
            lines += block.count(b"\n")


def first_character(stream: TextIO) -> str:
    """The first character that is not blank space ('' for a blank file)."""
    while block := stream.read(BLOCK):
        text = block.lstrip()
        if text:
            return text[0]
    return ""


def json_array_items(stream: TextIO, name: str) -> Iterator[Any]:
    """The elements of the JSON array that `stream` holds, one at a time."""
    text = _Text(stream, name)
    try:
        if text.next_character() != "[":
            raise text.error("Expecting value")
        text.pos += 1
        if text.next_character() == "]":
            text.pos += 1
        else:
            while True:
                text.next_character()
                yield text.value()
                follows = text.next_character()
                text.pos += 1
                if follows == "]":
                    break
                if follows != ",":
                    text.pos -= 1
                    raise text.error("Expecting ',' delimiter")
        if text.next_character():
            raise text.error("Extra data")
    except RecursionError:
        raise FormatError(f"{name}: nested too deeply to read") from None


class _Text:
    """The part of a stream not consumed yet, and where it begins in the file (for messages)."""

    def __init__(self, stream: TextIO, name: str) -> None:
        self.stream, self.name = stream, name
        self.text = ""
        self.pos = 0  # the next character to read, in `text`
        self.end = False  # the stream is exhausted
        self.lines = 0  # line breaks before text[0]
        self.column = 0  # characters between the last of them and text[0]

    def more(self) -> bool:
        """Read on, at least as much again as is held; False at the end of the file."""
        if self.end:
            return False
        done = self.text.count("\n", 0, self.pos)
        if done:
            self.lines += done
            self.column = self.pos - self.text.rfind("\n", 0, self.pos) - 1
        else:
            self.column += self.pos
        block = self.stream.read(max(BLOCK, len(self.text) - self.pos))
        self.text, self.pos = self.text[self.pos :] + block, 0
        self.end = not block
        return not self.end

    def next_character(self) -> str:
        """The next character after blank space ('' at the end of the file)."""
        while True:
            self.pos = _SPACE.match(self.text, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.text) or not self.more():
                return self.text[self.pos : self.pos + 1]

    def value(self) -> Any:
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as exc:
                cut = exc.pos >= len(self.text) - _CUT_SLACK or exc.msg.startswith("Unterminated")
                if cut and not self.end:
                    self.more()  # then decode again, at the end of the file if nothing came
                    continue
                raise self.error(exc.msg, exc.pos) from None
            except ValueError as exc:  # a number too long for Python to convert
                raise FormatError(f"{self.name}: bad JSON: {exc}") from None
            if end == len(self.text) and not self.end:
                self.more()  # a number at the end of the block may go on
                continue
            self.pos = end
            return value

    def error(self, message: str, at: int | None = None) -> FormatError:
        """A FormatError for `message` at `at` (the current position), in the file's lines and
        columns as json.loads counts them."""
        at = self.pos if at is None else at
        line = self.lines + self.text.count("\n", 0, at) + 1
        newline = self.text.rfind("\n", 0, at)
        column = at - newline if newline >= 0 else self.column + at + 1
        return FormatError(f"{self.name} line {line} column {column}: bad JSON: {message}")


def parse_json(text: str, name: str, line: int | None = None) -> Any:
    """json.loads, its failures as FormatErrors naming the place; `line` is that of a JSONL
    record (the parser's own line numbers then count within it)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = f"line {line if line is not None else exc.lineno} column {exc.colno}"
        raise FormatError(f"{name} {at}: bad JSON: {exc.msg}") from None
    except RecursionError:
        where = name if line is None else f"{name} line {line}"
        raise FormatError(f"{where}: nested too deeply to read") from None
    except ValueError as exc:  # a number too long for Python to convert
        where = name if line is None else f"{name} line {line}"
        raise FormatError(f"{where}: bad JSON: {exc}") from None


def jsonl_items(lines: Iterable[tuple[int, str]], name: str) -> Iterator[tuple[str, Any]]:
    """The one JSON Lines reader (reviewed files and training data): each non-blank line's value
    with where it is ("reviewed.jsonl line 7"), from (line number, text) pairs; a bad line is a
    FormatError naming its line and column."""
    for number, line in lines:
        if not line.strip():
            continue
        yield f"{name} line {number}", parse_json(line, name, number)
