"""The plain records that flow between the store and the file formats.

The store streams `ExportRow`s (already filtered and sorted) into a writer, and every parser
returns `ReviewRecord`s for the store to match against images. Neither side imports the other:
these dataclasses are the whole contract. Derived scores (least certain word, flags) are
computed here from the raw fields, never stored, so every format derives them the same way;
likewise the outcome rules and field checks live here once for every import format.

The store hands the rows over a chunk at a time, column by column (`DraftChunk`): a million
rows must flow at tens of thousands a second, and the CSV and JSON writers format a column with
one C-level call where building a row object and reading back its 26 fields cost more than
the formatting itself. Any iterable of `ExportRow`s still works (`draft_chunks` groups it).
"""

from __future__ import annotations

import gc
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from itertools import islice, repeat
from operator import add, attrgetter, getitem
from pathlib import Path
from typing import Any

from labeler.errors import FormatError

OUTCOMES = ("accepted", "edited", "rejected", "skipped")
"""Review outcomes: accepted unchanged, edited, rejected (the draft is unusable), skipped."""

END_TOKEN = "<end>"
"""How the end token is named when it is the least certain token of a finished draft."""


@dataclass(frozen=True)
class Alternative:
    """A lower-ranked beam-search hypothesis; rank 1 is the runner-up (the best is rank 0)."""

    rank: int
    text: str
    log_likelihood: float
    num_tokens: int
    confidence: float
    p_accept: float  # calibrated P(accepted unchanged); confidence when no calibrator


@dataclass
class ExportRow:
    """One draft caption of one image, with its review if there is one.

    Not frozen: a frozen dataclass sets each of these 26 fields through object.__setattr__, four
    times the cost of building the row, and an export builds a million of them. Writers treat
    rows as read-only all the same."""

    image_id: int
    dataset: str
    path: str  # relative to the dataset root, '/'-separated
    abs_path: str
    content_hash: str
    width: int | None
    height: int | None
    model_name: str
    model_hash: str
    settings_key: str
    caption_id: int
    text: str
    log_likelihood: float
    num_tokens: int
    confidence: float
    p_accept: float  # calibrated P(a reviewer accepts it unchanged); confidence without one
    token_logprobs: list[float]  # the words, then the end token when finished
    margin: float | None
    finished: bool
    repeated_ngram: bool
    has_unknown: bool
    alternatives: tuple[Alternative, ...] = ()
    review_text: str | None = None
    review_outcome: str | None = None
    reviewer: str | None = None
    reviewed_at: datetime | None = None

    @property
    def flagged(self) -> bool:
        """A degenerate draft: no end token within the length limit, repeats, or unknown words."""
        return not self.finished or self.repeated_ngram or self.has_unknown

    @property
    def least_certain(self) -> tuple[str, float] | None:
        """The token with the lowest log-probability and that log-probability."""
        word, logprob = least_certain(self.text, self.token_logprobs)
        return None if word is None else (word, logprob)  # type: ignore[return-value]

    @property
    def least_certain_index(self) -> int | None:
        """Which token is least certain: a word's index, or len(words) for the end token."""
        logprobs = self.token_logprobs
        return logprobs.index(min(logprobs)) if logprobs else None  # the first of equals

    @property
    def model_version(self) -> str:
        """A short label naming the model and its weights, e.g. 'show-tell-ab12cd' (the name as
        is when it already ends with the hash's first six digits, as a checkpoint's does)."""
        suffix = self.model_hash[:6]
        if not suffix or self.model_name.endswith(suffix):
            return self.model_name
        return f"{self.model_name}-{suffix}"

    @property
    def final_text(self) -> str:
        """The caption to train on: the reviewer's text if the draft was edited, else the draft."""
        if self.review_outcome == "edited" and self.review_text:
            return self.review_text
        return self.text


def least_certain(text: str, logprobs: Sequence[float]) -> tuple[str | None, float | None]:
    """The token with the lowest log-probability and that log-probability; (None, None) when
    there are no tokens.

    Tokens are the caption's whitespace-separated words followed by the end token, which
    is how the decoder emitted them; an index past the words is the end token.
    """
    if not logprobs:
        return None, None
    lowest = min(logprobs)
    index = logprobs.index(lowest)  # the first of equals
    words = text.split()
    return (words[index] if index < len(words) else END_TOKEN), lowest


CHUNK_SIZE = 2000
"""Rows per DraftChunk: large enough that per-chunk work vanishes, small enough to stay flat."""


@dataclass
class DraftChunk:
    """Consecutive ExportRows stored column by column: each field holds one value per row.

    The fields are ExportRow's, in the same order, so `rows` is `map(ExportRow, *columns)`.
    """

    image_id: Sequence[int]
    dataset: Sequence[str]
    path: Sequence[str]
    abs_path: Sequence[str]
    content_hash: Sequence[str]
    width: Sequence[int | None]
    height: Sequence[int | None]
    model_name: Sequence[str]
    model_hash: Sequence[str]
    settings_key: Sequence[str]
    caption_id: Sequence[int]
    text: Sequence[str]
    log_likelihood: Sequence[float]
    num_tokens: Sequence[int]
    confidence: Sequence[float]
    p_accept: Sequence[float]
    token_logprobs: Sequence[list[float]]
    margin: Sequence[float | None]
    finished: Sequence[bool]
    repeated_ngram: Sequence[bool]
    has_unknown: Sequence[bool]
    alternatives: Sequence[tuple[Alternative, ...]]
    review_text: Sequence[str | None]
    review_outcome: Sequence[str | None]
    reviewer: Sequence[str | None]
    reviewed_at: Sequence[datetime | None]
    # Derived columns worked out once (`memo`); they travel with the chunk when it is pickled,
    # so the export's reader process can compute them while the writer formats the chunk before.
    derived: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def memo(self, key: str, compute: Callable[[DraftChunk], Any]) -> Any:
        """`compute(self)`, computed the first time only."""
        try:
            return self.derived[key]
        except KeyError:
            value = self.derived[key] = compute(self)
            return value

    def __len__(self) -> int:
        return len(self.image_id)

    def columns(self) -> list[Sequence]:  # type: ignore[type-arg]
        return [getattr(self, name) for name in _FIELDS]

    def rows(self) -> Iterator[ExportRow]:
        return map(ExportRow, *self.columns())

    @classmethod
    def from_rows(cls, rows: Sequence[ExportRow]) -> DraftChunk:
        return cls(*([getter(row) for row in rows] for getter in _GETTERS))

    def least_certain(self) -> tuple[Sequence[str | None], Sequence[float | None]]:
        """`least_certain` of every row: the words, and their log-probabilities."""
        return self.memo("least_certain", DraftChunk._least_certain)

    def _least_certain(self) -> tuple[Sequence[str | None], Sequence[float | None]]:
        """The same steps as `least_certain`, each over the whole column in C; the end token is
        appended to each caption so that an index past the words names it. A row without
        tokens, or with more tokens than words and end token, sends the chunk the slow way.
        """
        if not self:
            return (), ()
        logprobs = self.token_logprobs
        try:
            lowest = list(map(min, logprobs))
            indexes = map(list.index, logprobs, lowest)
            words = map(str.split, map(add, self.text, repeat(_AND_END)))
            return list(map(getitem, words, indexes)), lowest
        except (ValueError, IndexError, TypeError):
            pairs = zip(*map(least_certain, self.text, logprobs), strict=True)
            return next(pairs), next(pairs)

    def flagged(self) -> list[bool]:
        """`ExportRow.flagged` of every row."""
        return [
            not finished or repeated or unknown
            for finished, repeated, unknown in zip(
                self.finished, self.repeated_ngram, self.has_unknown, strict=True
            )
        ]


_AND_END = " " + END_TOKEN
_FIELDS = [f.name for f in fields(ExportRow)]
_GETTERS = [attrgetter(name) for name in _FIELDS]


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block, then as it was.

    Rows hold no reference cycles, so the collector finds nothing to free, yet the allocations
    of a million rows set it off every few thousand, and each time it walks every live object:
    a third of the cost of reading the rows. Reference counting still frees everything.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def draft_chunks(rows: Iterable[ExportRow]) -> Iterator[DraftChunk]:
    """The rows as DraftChunks: the store's own chunks when `rows` is its stream (it has a
    `chunks` method), otherwise CHUNK_SIZE rows at a time."""
    chunks = getattr(rows, "chunks", None)
    if chunks is not None:
        yield from chunks()
        return
    iterator = iter(rows)
    while batch := list(islice(iterator, CHUNK_SIZE)):
        chunk = DraftChunk.from_rows(batch)
        del batch  # the chunk holds the values, not the rows: let the rows go
        yield chunk


@dataclass
class ExportResult:
    """What a writer produced.

    `paths` lists the files written, except for sidecars where it holds only the output folder
    (a list of a million paths would defeat streaming). `skipped` counts sidecars left alone
    because they existed, `conflicts` sidecars that two rows of this export mapped to.
    `removed` counts the temporary files of killed exports that this one removed beside its
    targets, `removed_bytes` their size.
    """

    count: int
    paths: list[Path] = field(default_factory=list)
    skipped: int = 0
    conflicts: int = 0
    rejected: int = 0  # sidecars: images whose draft a reviewer rejected get none
    removed: int = 0
    removed_bytes: int = 0


@dataclass(frozen=True)
class ReviewRecord:
    """One reviewed caption read from a file, not yet matched to an image in the store.

    `where` names the place in the file ("reviews.csv line 12", "export.json record 3") so
    that the store can name it when the record does not match. At least one of image_id, path,
    content_hash is set. `outcome` is None only when the file did not say and the draft text
    was not there to compare against: the store then compares with its own draft.

    `external_id` is the review tool's own name for the review when it has one (a Label Studio
    annotation: "label-studio:<annotation id>"), the same whichever file or format brought it,
    and `external_updated_at` when the tool last changed it: the store keeps one review per
    external id and image, replaced only by a newer one.
    """

    where: str
    image_id: int | None = None
    path: str | None = None
    content_hash: str | None = None
    caption_id: int | None = None
    draft_text: str | None = None
    reviewed_text: str | None = None
    outcome: str | None = None
    reviewer: str | None = None
    reviewed_at: datetime | None = None
    external_id: str | None = None
    external_updated_at: datetime | None = None


def normalise_text(text: str) -> str:
    """Collapse runs of whitespace (newlines included) so that re-typed captions compare equal."""
    return " ".join(text.split())


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN or infinity; such a score is written as null rather than invalid JSON."""
    if value is None or math.isfinite(value):
        return value
    return None


def parse_timestamp(text: str) -> datetime:
    """An ISO 8601 time ('Z' allowed); a time without a zone is taken as UTC."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def decide_outcome(
    where: str, draft: str | None, reviewed: str | None, outcome: str | None
) -> tuple[str | None, str | None] | None:
    """Apply the outcome rules; return (reviewed text, outcome), or None for an unreviewed row.

    - no reviewed caption and no outcome: not reviewed (None);
    - an explicit outcome wins, after validation against OUTCOMES (any case);
      'accepted' with an empty caption means the draft, and with a caption that differs from
      the draft it contradicts itself (an error, so that a forgotten edit is not lost);
      'edited' needs a caption;
    - otherwise the caption equal to the draft (whitespace normalised) is accepted, a different
      one edited, and without the draft to compare with the outcome is left to the store (None).
    """
    # Label Studio joins several text regions: check the caption as it will be stored.
    check_length(reviewed or "", where, "reviewed caption")
    text = normalise_text(reviewed) if reviewed else ""
    said = (outcome or "").strip().lower()
    if not text and not said:
        return None
    plain_draft = normalise_text(draft) if draft is not None else None
    if said:
        if said not in OUTCOMES:
            raise FormatError(
                f"{where}: unknown outcome {outcome!r}; use one of {', '.join(OUTCOMES)}"
            )
        if said == "accepted":
            if text and plain_draft is not None and text != plain_draft:
                raise FormatError(
                    f"{where}: outcome 'accepted' but the reviewed caption differs from the "
                    "draft; set the outcome to 'edited' or clear it"
                )
            return (text or plain_draft or None), said
        if said == "edited" and not text:
            raise FormatError(f"{where}: outcome 'edited' needs a reviewed caption")
        return (text or None), said
    if plain_draft is None:
        return text, None
    return text, ("accepted" if text == plain_draft else "edited")


MAX_TEXT = 10_000_000
"""The most characters a caption (or any text field) of an import file may hold, in every format:
far beyond any real caption, and low enough that a runaway cell is an error, not a stored blob."""


# NUL is refused by PostgreSQL in text columns, and a lone surrogate (JSON may write "\ud800")
# cannot be encoded to store at all: both are refused in every format and for every database,
# so that a file imports the same everywhere and fails before the store is touched.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def text_field(value: object, where: str, name: str) -> str | None:
    """A caption-like field: text or missing; a number or a list is a malformed file."""
    if value is None:
        return value
    if isinstance(value, str):
        check_text(value, where, name)
        return value
    raise FormatError(f"{where}: {name} is not text (got {type(value).__name__} {value!r:.40})")


def check_text(text: str, where: str, name: str, *, limit: int | None = None) -> None:
    """Refuse text the store cannot hold: over `limit` (MAX_TEXT) characters, a NUL character
    or a lone surrogate; the message names the line or record."""
    check_length(text, where, name, limit=limit)
    bad = _UNSTORABLE.search(text)
    if bad:
        char = bad.group()
        what = "a NUL character" if char == "\x00" else f"a lone surrogate ({char!r})"
        raise FormatError(f"{where}: {name} holds {what} at character {bad.start() + 1}")


def check_length(text: str, where: str, name: str, *, limit: int | None = None) -> None:
    """Refuse text over `limit` (MAX_TEXT) characters, naming the line or record."""
    limit = MAX_TEXT if limit is None else limit
    if len(text) > limit:
        raise FormatError(f"{where}: {name} is {len(text)} characters long; the limit is {limit}")


# Spreadsheets run a cell starting with one of these as a formula (OWASP "CSV injection"); a
# leading single quote makes them show it as text. To keep the CSV round trip exact the rule has
# to be reversible, so text that already starts with quotes before such a character gets one
# more quote too: export adds a quote to every cell matching ^'*[=+\-@\t\r], import takes one
# off every cell matching ^'+[=+\-@\t\r], and nothing else changes either way.
FORMULA_START = frozenset("=+-@\t\r")


def defuse_formula(text: str) -> str:
    """The CSV cell text for `text`: quoted with ' when a spreadsheet would run it."""
    return "'" + text if text.lstrip("'")[:1] in FORMULA_START else text


def restore_formula(text: str) -> str:
    """The text that `defuse_formula` turned into `text`."""
    if text[:1] == "'" and text.lstrip("'")[:1] in FORMULA_START:
        return text[1:]
    return text


MAX_ID = 2**31 - 1
"""The largest id an import file may name: the store's id columns are 32-bit INTEGER on
PostgreSQL, so a larger one could never match and would fail in the database instead."""


def int_field(value: object, where: str, name: str) -> int | None:
    """An id: a whole number from 0 to MAX_ID, or text holding one ('17', or '17.0' as
    spreadsheets write it)."""
    if value is None or value == "":
        return None
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float | str):
        try:
            real = float(value)
        except ValueError:
            real = math.nan
        if real.is_integer():
            number = int(real)
    if number is None:
        raise FormatError(f"{where}: {name} must be a whole number, got {value!r:.40}")
    if not 0 <= number <= MAX_ID:
        raise FormatError(f"{where}: {name} {value!r:.40} is out of range (0 to {MAX_ID})")
    return number


def time_field(value: object, where: str, name: str) -> datetime | None:
    """An ISO 8601 time, or missing."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            return parse_timestamp(value)
        except ValueError:
            pass
    raise FormatError(f"{where}: {name} is not an ISO 8601 time: {value!r:.40}")
