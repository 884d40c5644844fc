"""`labeler stats`: how far the confidence can be trusted, measured against the reviews.

Every number comes from the drafts one model and decoding settings produced (the newest run's by
default) and the newest review of each image. Acceptance means "accepted unchanged"; rejected
and edited drafts count against it; skipped ones are not reviews. Calibration bands split the
confidence range into equal-width bins; within each: how many drafts, how many reviewed, the
share accepted unchanged, the mean word edit distance between draft and correction, and the
corpus BLEU-4 of drafts against corrections. The AUROC says how well confidence alone ranks
accepted drafts above the others (0.5 is chance). The threshold is the lowest confidence such
that reviewed drafts at or above it were accepted at least `target` of the time, with the number
of drafts (reviewed or not) it would let through.
"""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass, field

from labeler.formats.rows import ExportRow, normalise_text
from labeler.store import Store
from labeler.store.exports import DraftFilter, iter_drafts, resolve
from labeler.store.images import status_counts


@dataclass
class Band:
    low: float
    high: float
    drafts: int = 0
    reviewed: int = 0
    accepted: int = 0
    edit_distance_sum: int = 0  # words, draft against correction (rejected: against nothing)
    bleu: float | None = None

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.reviewed if self.reviewed else None

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
    histogram: list[int] = field(default_factory=list)  # drafts per confidence bin
    bands: list[Band] = field(default_factory=list)
    auroc: float | None = None
    target: float = 0.95
    threshold: float | None = None  # lowest confidence keeping the target acceptance
    passed: int = 0  # drafts at or above the threshold
    mean_confidence: float | None = None

    def to_dict(self) -> dict:
        """Plain JSON-ready values (dataclasses.asdict mangles Counters)."""
        bands = [
            {**vars(b), "acceptance": b.acceptance, "mean_edit_distance": b.mean_edit_distance}
            for b in self.bands
        ]
        images = {name: dict(counts) for name, counts in self.images.items()}
        return {**vars(self), "images": images, "outcomes": dict(self.outcomes), "bands": bands}


def compute_stats(
    store: Store, *, spec: DraftFilter = DraftFilter(), bins: int = 10, target: float = 0.95
) -> Stats:
    """The numbers above for the drafts `spec` selects (a `limit` takes the first by image id)."""
    with store.session() as session:
        chosen = resolve(session, spec)
        stats = Stats(
            model=f"{chosen.model_name} ({chosen.model_hash[:12]})",
            settings_key=chosen.settings_key, images=status_counts(session), target=target,
        )  # fmt: skip
        stats.bands = [Band(i / bins, (i + 1) / bins) for i in range(bins)]
        stats.histogram = [0] * bins
        confidences = array("d")  # 8 bytes a draft: ten million drafts are 80 MB
        reviewed: list[tuple[float, bool]] = []
        pairs: list[list[tuple[str, str]]] = [[] for _ in range(bins)]
        for row in iter_drafts(session, spec, sort="id"):
            index = min(int(row.confidence * bins), bins - 1)
            stats.histogram[index] += 1
            stats.bands[index].drafts += 1
            stats.drafts += 1
            stats.flagged += row.flagged
            confidences.append(row.confidence)
            if _tally_review(row, stats.bands[index], pairs[index], stats.outcomes):
                reviewed.append((row.confidence, row.review_outcome == "accepted"))
    for band, band_pairs in zip(stats.bands, pairs, strict=True):
        band.bleu = corpus_bleu(band_pairs)
    stats.mean_confidence = sum(confidences) / len(confidences) if confidences else None
    stats.auroc = auroc(reviewed)
    stats.threshold = threshold_for(reviewed, target)
    if stats.threshold is not None:
        stats.passed = sum(c >= stats.threshold for c in confidences)
    return stats


def _tally_review(row: ExportRow, band: Band, pairs, outcomes: Counter[str]) -> bool:  # type: ignore[no-untyped-def]
    outcome = row.review_outcome
    if outcome is None:
        return False
    outcomes[outcome] += 1
    if outcome == "skipped":
        return False
    band.reviewed += 1
    band.accepted += outcome == "accepted"
    correction = row.text if outcome == "accepted" else (row.review_text or "")
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

    from labeler.metrics import simple_tokenize

    refs = {i: [simple_tokenize(ref)] for i, (_, ref) in enumerate(pairs)}
    hyps = {i: [simple_tokenize(draft)] for i, (draft, _) in enumerate(pairs)}
    score, _ = Bleu(4).compute_score(refs, hyps, verbose=0)
    return float(score[3])


def auroc(scored: list[tuple[float, bool]]) -> float | None:
    """Area under the ROC curve of the score for the positives (ties count half); None unless
    there are both positives and negatives."""
    positives = sum(1 for _, p in scored if p)
    negatives = len(scored) - positives
    if not positives or not negatives:
        return None
    ordered = sorted(scored, key=lambda item: item[0])
    rank_sum, i = 0.0, 0
    while i < len(ordered):
        j = i
        while j < len(ordered) and ordered[j][0] == ordered[i][0]:
            j += 1
        mean_rank = (i + j + 1) / 2  # ranks i+1..j, averaged over the tie
        rank_sum += mean_rank * sum(1 for _, p in ordered[i:j] if p)
        i = j
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def threshold_for(scored: list[tuple[float, bool]], target: float) -> float | None:
    """The lowest confidence t such that reviewed drafts with confidence >= t were accepted at
    least `target` of the time; None when even the most confident fall short."""
    ordered = sorted(scored, key=lambda item: -item[0])
    best, accepted = None, 0
    for i, (confidence, ok) in enumerate(ordered, 1):
        accepted += ok
        tie_continues = i < len(ordered) and ordered[i][0] == confidence
        if not tie_continues and accepted / i >= target:
            best = confidence
    return best
