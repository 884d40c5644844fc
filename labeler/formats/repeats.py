"""Which records of a reviewed file repeat an earlier one, in memory that does not grow with it.

Our formats hold one row per draft, so two rows of one draft must say the same: an exact repeat
is kept once, a contradiction refused naming both (reviews.py). A file of a million rows cannot
keep every row to compare, nor even a dict of them (about 100 bytes an entry); what is kept per
record is fixed and small, 32 bytes, and goes to temporary files past a limit.
"""

from __future__ import annotations

import hashlib
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import IO

from labeler.errors import FormatError
from labeler.records import ReviewRecord, normalise_text

ID_COLUMNS = ("image_id", "path", "content_hash")


class Repeats:
    """Which records of a file repeat an earlier one, and whether two contradict each other.

    Records are fed in file order (`add`), then `finish` refuses the first record that says
    something else than the first record of its draft, naming both, and `kept` leaves the exact
    repeats out of a second read. The draft is named by the record's first id (image id, else
    path, else content hash) and its caption id. What is kept per record is small and fixed: a
    128-bit hash of the draft's name, a 64-bit hash of what the record says (its normalised
    caption and outcome) and its number, 32 bytes. They are grouped by the name's hash into
    BUCKETS, spilled to temporary files once SPILL records are held, and sorted a bucket at a
    time, so memory stays flat however long the file; only exact repeats' numbers are kept.
    """

    BUCKETS = 64
    SPILL = 1 << 16

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0  # records added
        self._held: list[array[int]] = [array("Q") for _ in range(self.BUCKETS)]
        self._files: list[IO[bytes] | None] = [None] * self.BUCKETS
        self._holding = 0
        self._repeats: list[int] = []  # numbers of exact repeats, ascending

    def add(self, record: ReviewRecord) -> None:
        number = self.count
        self.count += 1
        image = next(((i, v) for i, v in enumerate(_ids(record)) if v is not None), None)
        if image is None:  # nothing to match by: the store names it
            return
        name = hashlib.blake2b(repr((*image, record.caption_id)).encode(), digest_size=16)
        said = hashlib.blake2b(repr(_said(record)).encode(), digest_size=8)
        high, low = divmod(int.from_bytes(name.digest(), "little"), 1 << 64)
        self._held[high % self.BUCKETS].extend((high, low, int.from_bytes(said.digest()), number))
        self._holding += 1
        if self._holding >= self.SPILL:
            self._spill()

    def finish(self, record_at: Callable[[int], ReviewRecord]) -> None:
        """Find the repeats; refuse the first contradiction, naming both records (`record_at`
        gives a record by its number, read again only then)."""
        import numpy as np

        conflict: tuple[int, int] | None = None  # (number, the first of its draft)
        repeats = []
        for bucket in range(self.BUCKETS):
            entries = np.frombuffer(self._take(bucket), dtype=np.uint64).reshape(-1, 4)
            if not len(entries):
                continue
            entries = entries[np.lexsort((entries[:, 3], entries[:, 1], entries[:, 0]))]
            starts = np.ones(len(entries), dtype=bool)
            starts[1:] = np.any(entries[1:, :2] != entries[:-1, :2], axis=1)
            first = np.maximum.accumulate(np.where(starts, np.arange(len(entries)), 0))
            differs = entries[:, 2] != entries[first, 2]
            if differs.any():
                at = np.flatnonzero(differs)[np.argmin(entries[differs, 3])]
                found = int(entries[at, 3]), int(entries[first[at], 3])
                conflict = found if conflict is None else min(conflict, found)
            repeats.append(entries[~starts & ~differs, 3])
        if conflict is not None:
            raise self._contradiction(record_at(conflict[1]), record_at(conflict[0]))
        self._repeats = np.sort(np.concatenate(repeats)).tolist() if repeats else []

    def kept(self, records: Iterable[ReviewRecord]) -> Iterator[ReviewRecord]:
        """`records` (the same, read again) without the exact repeats."""
        repeats = iter(self._repeats)
        skip = next(repeats, None)
        for number, record in enumerate(records):
            if number == skip:
                skip = next(repeats, None)
                continue
            yield record

    def _spill(self) -> None:
        for bucket, held in enumerate(self._held):
            if held:
                file = self._files[bucket]
                if file is None:
                    file = tempfile.TemporaryFile(prefix="labeler-repeats-")  # noqa: SIM115
                    self._files[bucket] = file  # closed by _take
                held.tofile(file)
                del held[:]
        self._holding = 0

    def _take(self, bucket: int) -> bytes:
        held, file = self._held[bucket], self._files[bucket]
        self._held[bucket], self._files[bucket] = array("Q"), None
        if file is None:
            return held.tobytes()
        with file:
            file.seek(0)
            return file.read() + held.tobytes()

    def _contradiction(self, first: ReviewRecord, record: ReviewRecord) -> FormatError:
        index, value = next((i, v) for i, v in enumerate(_ids(record)) if v is not None)
        return FormatError(
            f"{first.where} and {record.where.removeprefix(self.name + ' ')}: two different "
            f"reviews of the image with {ID_COLUMNS[index]} {value!r}; keep one"
        )


def _ids(record: ReviewRecord) -> tuple[int | str | None, ...]:
    return record.image_id, record.path, record.content_hash


def _said(record: ReviewRecord) -> tuple[str, str | None]:
    return normalise_text(record.reviewed_text or ""), record.outcome
