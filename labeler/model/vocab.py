"""Word vocabulary: tokenisation, ids, and the four special tokens.

Tokens are lower-cased Unicode words (NFC-normalised, so "café" typed two ways is one word) with
inner apostrophes and hyphens kept ("dog's", "t-shirt"); every other punctuation mark is a token of
its own, so "dog," and "dog" share an id. Ids are assigned by descending count, ties broken
alphabetically, which makes `build` deterministic for the same captions. The vocabulary is saved
inside each checkpoint as a plain list of words.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

from labeler.errors import ModelError

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)  # ids 0..3, in this order

# A word is a run of letters/digits, optionally joined by apostrophes or hyphens; any other
# non-space character stands alone.
_TOKEN_RE = re.compile(r"\w+(?:['’\-]\w+)*|[^\w\s]")
# Marks that attach to the previous word when tokens are joined back into text.
_CLOSING = set(".,;:!?)]}%’”»")
_OPENING = set("([{“«")


class Vocabulary:
    """Maps words to ids and back; ids 0-3 are pad, start, end and unknown."""

    pad_id, start_id, end_id, unk_id = 0, 1, 2, 3

    def __init__(self, words: Sequence[str]) -> None:
        """`words` are the ordinary words, in id order after the four specials."""
        self.itos: list[str] = [*SPECIALS, *words]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ModelError("vocabulary has duplicate words")

    @classmethod
    def build(
        cls, captions: Iterable[str], *, min_count: int = 1, max_size: int | None = None
    ) -> Vocabulary:
        """Words seen at least `min_count` times; `max_size` caps the total, specials included."""
        counts = Counter(tok for caption in captions for tok in cls.tokenize(caption))
        for special in SPECIALS:
            counts.pop(special, None)
        kept = (w for w, c in counts.items() if c >= min_count)
        ranked = sorted(kept, key=lambda w: (-counts[w], w))
        if max_size is not None:
            ranked = ranked[: max(0, max_size - len(SPECIALS))]
        return cls(ranked)

    @staticmethod
    def tokenize(text: str) -> list[str]:
        return _TOKEN_RE.findall(unicodedata.normalize("NFC", text).lower())

    @staticmethod
    def detokenize(tokens: Sequence[str]) -> str:
        """Join tokens with spaces, attaching closing punctuation to the word before it."""
        out: list[str] = []
        for tok in tokens:
            if out and (tok in _CLOSING or out[-1] in _OPENING):
                out[-1] += tok
            else:
                out.append(tok)
        return " ".join(out)

    def encode(self, text: str | Sequence[str], *, add_start_end: bool = False) -> list[int]:
        """Ids of a caption (a string, or tokens); unknown words map to the unknown id."""
        tokens = self.tokenize(text) if isinstance(text, str) else text
        ids = [self.stoi.get(tok, self.unk_id) for tok in tokens]
        return [self.start_id, *ids, self.end_id] if add_start_end else ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of a sequence of ids: stops at the end token, skips pad and start."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i not in (self.pad_id, self.start_id):
                words.append(self.itos[i])
        return words

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def to_dict(self) -> dict:
        return {"specials": list(SPECIALS), "words": self.itos[len(SPECIALS) :]}

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        if not isinstance(data, dict) or list(data.get("specials", [])) != list(SPECIALS):
            raise ModelError("vocabulary is missing or uses different special tokens")
        words = data.get("words")
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ModelError("vocabulary words must be a list of strings")
        return cls(words)
