"""`labeler stats`: how far p_accept (and each raw signal) can be trusted, measured on reviews.

Every number comes from the drafts one model and decoding settings produced (the newest run's by
default) and the review that counts for each draft (store/drafts.py, `latest_review`): the newest
review made on that draft, or on a draft of the image with the very same text. A review of other
text judged another draft, so after `labeler caption` re-drafts an image with other text the new
draft is unreviewed, whatever was said of the old one. Acceptance means "accepted unchanged";
rejected and edited drafts count against it; skipped ones are not reviews. The bands split
p_accept's range [0, 1] into equal-width bins (where no calibrator scored the drafts, p_accept is
their confidence); within each: how many drafts, how many reviewed, the mean p_accept of those
reviewed (what was predicted) against the share accepted unchanged (what happened), the mean word
edit distance between draft and correction, and the corpus BLEU-4 of drafts against corrections. The
expected calibration error sums, over the bands, the share of reviews times |predicted - observed|.
The AUROC of p_accept, and of confidence and every raw signal the calibrator reads
(calibration.SIGNALS), says how well each ranks accepted drafts above the others (0.5 is chance;
below it, the signal ranks them backwards). The threshold is the lowest p_accept such that reviewed
drafts at or above it were accepted at least `target` of the time, with the number of drafts
(reviewed or not) it would let through.
"""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from labeler import calibration
from labeler.errors import InputError
from labeler.records import ExportRow, normalise_text
from labeler.store import Store
from labeler.store import calibrators as calibrator_store
from labeler.store.drafts import DraftFilter, iter_drafts, resolve
from labeler.store.images import status_counts

SCORES = (*calibration.SIGNALS, "confidence", "p_accept")  # what stats measures the AUROC of


@dataclass
class Band:
    low: float
    high: float
    drafts: int = 0
    reviewed: int = 0
    accepted: int = 0
    edit_distance_sum: int = 0  # words, draft against correction (rejected: against nothing)
    bleu: float | None = None
    p_accept_sum: float = 0.0  # over the reviewed drafts

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.reviewed if self.reviewed else None

    @property
    def predicted(self) -> float | None:
        """The mean p_accept of the reviewed drafts: what the calibrator expected."""
        return self.p_accept_sum / self.reviewed if self.reviewed else None

    @property
    def mean_edit_distance(self) -> float | None:
        return self.edit_distance_sum / self.reviewed if self.reviewed else None


@dataclass
class Stats:
    model: str
    settings_key: str
    images: dict[str, Counter[str]]  # per dataset, by status
    drafts: int = 0
    flagged: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    histogram: list[int] = field(default_factory=list)  # drafts per p_accept band
    bands: list[Band] = field(default_factory=list)  # by p_accept
    auroc: float | None = None  # of p_accept, for acceptance
    signal_auroc: dict[str, float | None] = field(default_factory=dict)  # SCORES -> AUROC
    ece: float | None = None  # expected calibration error of p_accept on the reviews
    scored_by: list[calibrator_store.Usage] = field(default_factory=list)
    target: float = 0.95
    threshold: float | None = None  # lowest p_accept keeping the target acceptance
    passed: int = 0  # drafts at or above the threshold
    mean_confidence: float | None = None
    mean_p_accept: float | None = None

    def to_dict(self) -> dict:
        """Plain JSON-ready values (dataclasses.asdict mangles Counters)."""
        bands = [
            {**vars(b), "acceptance": b.acceptance, "predicted": b.predicted,
             "mean_edit_distance": b.mean_edit_distance}
            for b in self.bands
        ]  # fmt: skip
        images = {name: dict(counts) for name, counts in self.images.items()}
        return {**vars(self), "images": images, "outcomes": dict(self.outcomes), "bands": bands,
                "scored_by": [asdict(u) for u in self.scored_by]}  # fmt: skip


def accepted(row: ExportRow) -> bool | None:
    """Whether the review that counts for the draft accepted it unchanged; None: no such
    review, or skipped."""
    if row.review_outcome is None or row.review_outcome == "skipped":
        return None
    return row.review_outcome == "accepted"


def signals(row: ExportRow) -> list[float]:
    """The draft's signals (calibration.SIGNALS), from its stored fields."""
    return calibration.draft_signals(
        row.log_likelihood, row.num_tokens, row.token_logprobs, row.margin, row.finished,
        row.repeated_ngram, row.has_unknown,
    )  # fmt: skip


class _Judged:
    """The reviewed drafts' scores, packed (8 bytes a value: a million reviews are ~80 MB)."""

    def __init__(self) -> None:
        self.signals = array("d")  # len(SIGNALS) per draft
        self.confidence = array("d")
        self.p_accept = array("d")
        self.right = array("b")

    def add(self, row: ExportRow, right: bool) -> None:
        self.signals.extend(signals(row))
        self.confidence.append(row.confidence)
        self.p_accept.append(row.p_accept)
        self.right.append(right)

    def aurocs(self) -> dict[str, float | None]:
        columns = np.frombuffer(self.signals, np.float64).reshape(-1, len(calibration.SIGNALS))
        right = np.frombuffer(self.right, np.int8).astype(bool)
        scores = {name: columns[:, i] for i, name in enumerate(calibration.SIGNALS)}
        scores["confidence"] = np.frombuffer(self.confidence, np.float64)
        scores["p_accept"] = np.frombuffer(self.p_accept, np.float64)
        return {name: calibration.auroc(scores[name], right) for name in SCORES}


def compute_stats(
    store: Store, *, spec: DraftFilter = DraftFilter(), bins: int = 10, target: float = 0.95
) -> Stats:
    """The numbers above for the drafts `spec` selects (a `limit` takes the first by image id);
    `bins` p_accept bands, `target` the acceptance the threshold must keep."""
    if not 0 < target <= 1:  # NaN fails too
        raise InputError(f"--target must be in (0, 1], got {target}")
    if bins < 1:
        raise InputError(f"--bins must be at least 1, got {bins}")
    with store.session() as session:
        chosen = resolve(session, spec)
        stats = Stats(
            model=f"{chosen.model_name} ({chosen.model_hash[:12]})",
            settings_key=chosen.settings_key, images=status_counts(session), target=target,
        )  # fmt: skip
        stats.scored_by = calibrator_store.usage(
            session, model_id=chosen.model_id, settings_key=chosen.settings_key
        )
        stats.bands = [Band(i / bins, (i + 1) / bins) for i in range(bins)]
        stats.histogram = [0] * bins
        p_accepts = array("d")  # 8 bytes a draft: ten million drafts are 80 MB
        confidence_sum = 0.0
        judged = _Judged()
        pairs: list[list[tuple[str, str]]] = [[] for _ in range(bins)]
        for row in iter_drafts(session, spec, sort="id"):
            index = min(max(int(row.p_accept * bins), 0), bins - 1)
            stats.histogram[index] += 1
            stats.bands[index].drafts += 1
            stats.drafts += 1
            stats.flagged += row.flagged
            p_accepts.append(row.p_accept)
            confidence_sum += row.confidence
            if _tally_review(row, stats.bands[index], pairs[index], stats.outcomes):
                judged.add(row, row.review_outcome == "accepted")
    for band, band_pairs in zip(stats.bands, pairs, strict=True):
        band.bleu = corpus_bleu(band_pairs)
    if stats.drafts:
        stats.mean_confidence = confidence_sum / stats.drafts
        stats.mean_p_accept = sum(p_accepts) / stats.drafts
    _score(stats, judged, p_accepts, bins)
    return stats


def _score(stats: Stats, judged: _Judged, p_accepts: array, bins: int) -> None:  # type: ignore[type-arg]
    """The AUROCs, the calibration error and the threshold, from the reviewed drafts."""
    stats.signal_auroc = judged.aurocs()
    stats.auroc = stats.signal_auroc["p_accept"]
    stats.ece = calibration.expected_calibration_error(
        np.frombuffer(judged.p_accept, np.float64), np.frombuffer(judged.right, np.int8), bins=bins
    )
    reviewed = list(zip(judged.p_accept, map(bool, judged.right), strict=True))
    stats.threshold = threshold_for(reviewed, stats.target)
    if stats.threshold is not None:
        stats.passed = sum(p >= stats.threshold for p in p_accepts)


def _tally_review(row: ExportRow, band: Band, pairs, outcomes: Counter[str]) -> bool:  # type: ignore[no-untyped-def]
    if row.review_outcome is not None:
        outcomes[row.review_outcome] += 1
    right = accepted(row)
    if right is None:
        return False
    band.reviewed += 1
    band.accepted += right
    band.p_accept_sum += row.p_accept
    correction = row.text if right else (row.review_text or "")
    band.edit_distance_sum += word_edit_distance(row.text, correction)
    if correction:
        pairs.append((row.text, correction))
    return True


def word_edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two captions, counted in words (case and spacing ignored)."""
    x, y = normalise_text(a.lower()).split(), normalise_text(b.lower()).split()
    previous = list(range(len(y) + 1))
    for i, word in enumerate(x, 1):
        current = [i]
        for j, other in enumerate(y, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (word != other)))  # fmt: skip
        previous = current
    return previous[-1]


def corpus_bleu(pairs: list[tuple[str, str]]) -> float | None:
    """BLEU-4 of drafts against corrections, with pycocoevalcap's scorer; None without pairs."""
    if not pairs:
        return None
    from pycocoevalcap.bleu.bleu import Bleu

    from labeler.training.metrics import simple_tokenize

    refs = {i: [simple_tokenize(ref)] for i, (_, ref) in enumerate(pairs)}
    hyps = {i: [simple_tokenize(draft)] for i, (draft, _) in enumerate(pairs)}
    score, _ = Bleu(4).compute_score(refs, hyps, verbose=0)
    return float(score[3])


def threshold_for(scored: list[tuple[float, bool]], target: float) -> float | None:
    """The lowest score t (p_accept) such that reviewed drafts scoring >= t were accepted at
    least `target` of the time; None when even the highest scored fall short."""
    ordered = sorted(scored, key=lambda item: -item[0])
    best, accepted = None, 0
    for i, (score, ok) in enumerate(ordered, 1):
        accepted += ok
        tie_continues = i < len(ordered) and ordered[i][0] == score
        if not tie_continues and accepted / i >= target:
            best = score
    return best
