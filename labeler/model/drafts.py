"""What a caption run asks for (`DecodeSettings`) and what it gets back (`Draft`, `ImageDrafts`).

These are plain dataclasses with no torch import, so the store, the exporters and the CLI can use
them without loading a model. The raw quantities (`log_likelihood`, `num_tokens`, the per-token
log-probabilities) are stored as they came out of the search; every derived score has its own name
(`confidence`, `score`, `margin`) so nothing downstream has to guess which one it holds.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import pairwise

from labeler.errors import InputError

# A draft is flagged as repetitive when the same word appears twice in a row or any word
# trigram appears twice. Bigram repeats ("of a ... of a") are common in good captions; trigram
# repeats and stutters are the classic failure of an LSTM decoder that loops.
REPEAT_NGRAM = 3


@dataclass(frozen=True)
class DecodeSettings:
    """How to decode; `key()` is part of a draft's identity in the store."""

    beam_size: int = 3
    # Decoding steps, i.e. words plus the end token: a finished draft has at most max_len - 1
    # words, and one that used every step without emitting the end token is unfinished.
    max_len: int = 20
    # Fewest words before the end token is allowed.
    min_len: int = 1
    # GNMT length-penalty exponent alpha; 0.0 ranks by raw log-likelihood (off). See beam.py.
    length_penalty: float = 0.0
    # How many hypotheses to return per image, best first (1..beam_size).
    n_best: int = 1
    # Block any n-gram of this size from appearing twice in a hypothesis; 0 is off, 3 is the
    # usual trigram blocking.
    block_repeat_ngram: int = 0
    # Never emit the unknown token.
    block_unk: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.beam_size >= 1, "beam size must be at least 1"),
            (self.max_len >= 1, "max length must be at least 1"),
            (self.min_len >= 0, "min length must not be negative"),
            (self.length_penalty >= 0, "length penalty must not be negative"),
            (1 <= self.n_best <= self.beam_size, "n-best must be between 1 and the beam size"),
            (self.block_repeat_ngram >= 0, "repeated n-gram size must not be negative"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(f"invalid decoding settings: {message} ({self})")

    def to_dict(self) -> dict:
        return asdict(self)

    def overridden(self, **given: object) -> DecodeSettings:
        """These settings with the given fields changed (None keeps a field); a smaller beam
        takes n-best down with it unless n-best is given too."""
        changes = {k: v for k, v in given.items() if v is not None}
        if "beam_size" in changes and "n_best" not in changes:
            changes["n_best"] = min(self.n_best, changes["beam_size"])
        return replace(self, **changes)

    def key(self) -> str:
        """A short stable hash of every field; two settings decode alike iff their keys match."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Draft:
    """One caption hypothesis with its confidence fields; build it with `Draft.build`."""

    text: str  # the words joined by spaces, punctuation attached to the word before it
    words: list[str]
    token_ids: list[int]  # word ids only: no start and no end token
    # Natural-log probability summed over the words and, when finished, the end token.
    log_likelihood: float
    num_tokens: int  # words, plus one for the end token when finished
    confidence: float  # exp(log_likelihood / num_tokens): geometric-mean token probability
    token_logprobs: list[float] = field(repr=False)  # one per token counted in num_tokens
    score: float = 0.0  # the ranking score, which includes the length penalty when it is on
    finished: bool = True  # False: used every decoding step without emitting the end token
    repeated_ngram: bool = False  # see REPEAT_NGRAM
    has_unknown: bool = False  # contains the unknown-word token

    @classmethod
    def build(
        cls,
        words: Sequence[str],
        token_ids: Sequence[int],
        token_logprobs: Sequence[float],
        *,
        finished: bool,
        score: float,
        unk_id: int,
        text: str | None = None,
    ) -> Draft:
        """Derive the totals and flags from the raw per-token values, so they always agree."""
        logprobs = [float(x) for x in token_logprobs]
        num_tokens = len(words) + (1 if finished else 0)
        if len(logprobs) != num_tokens or len(words) != len(token_ids):
            raise ValueError("token_logprobs must hold one value per word plus the end token")
        log_likelihood = math.fsum(logprobs)
        return cls(
            text=" ".join(words) if text is None else text,
            words=list(words),
            token_ids=[int(i) for i in token_ids],
            log_likelihood=log_likelihood,
            num_tokens=num_tokens,
            confidence=math.exp(log_likelihood / num_tokens) if num_tokens else 1.0,
            token_logprobs=logprobs,
            score=float(score),
            finished=finished,
            repeated_ngram=has_repeated_ngram(words),
            has_unknown=unk_id in token_ids,
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ImageDrafts:
    """The n-best drafts for one image, best first and distinct."""

    drafts: list[Draft]
    # best.log_likelihood - runner_up.log_likelihood, in nats: the best draft is exp(margin)
    # times as likely as the runner-up. The runner-up is the search's second hypothesis even
    # when n_best=1 does not return it; None when the search kept only one (beam size 1).
    margin: float | None

    @property
    def best(self) -> Draft:
        return self.drafts[0]


def has_repeated_ngram(words: Sequence[str], n: int = REPEAT_NGRAM) -> bool:
    """True when a word repeats immediately or any n-gram occurs twice (overlaps count)."""
    if any(a == b for a, b in pairwise(words)):
        return True
    seen: set[tuple[str, ...]] = set()
    for i in range(len(words) - n + 1):
        gram = tuple(words[i : i + n])
        if gram in seen:
            return True
        seen.add(gram)
    return False
