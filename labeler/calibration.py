"""`p_accept`: the probability that a draft is right, fitted on the draft's own signals.

Which raw signal predicts a right draft is an empirical question (on generated scenes the
per-token `confidence` ranked right drafts no better than chance, the raw log-likelihood well), so
a calibrator takes all of them and learns the mix: a logistic regression on standardised signals,
fitted by Newton's method with a small L2 penalty (a handful of weights; no library needed, and no
torch, so the store, the exports and the CLI can score drafts without loading a model).

The signals of a draft, all stored with it, so `p_accept` can be recomputed without decoding:
log_likelihood, num_tokens, the mean and the minimum token log-probability, the margin to the
runner-up (0 when the search kept only one hypothesis), and the three flags (unfinished, repeated
n-gram, unknown word). A calibrator is plain data (`to_dict`), kept in the checkpoint (fitted on
the validation split at the end of training) and in the store (refitted on reviews).

The quality figures a calibrator carries are honest: AUROC and expected calibration error come
from out-of-fold predictions (k-fold cross-validation), never from the data the weights saw.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from labeler.errors import InputError

SIGNALS = (
    "log_likelihood",
    "num_tokens",
    "mean_logprob",
    "min_logprob",
    "margin",
    "unfinished",
    "repeated_ngram",
    "has_unknown",
)
FORMAT = "labeler.calibrator"
FORMAT_VERSION = 1
MIN_EXAMPLES = 30  # fewest judged drafts to fit on...
MIN_EACH = 5  # ...with at least this many right and this many wrong
ECE_BINS = 10


def draft_signals(
    log_likelihood: float,
    num_tokens: int,
    token_logprobs: Sequence[float],
    margin: float | None,
    finished: bool,
    repeated_ngram: bool,
    has_unknown: bool,
) -> list[float]:
    """One draft's signals, in SIGNALS order."""
    logprobs = list(token_logprobs) or [0.0]
    return [
        float(log_likelihood),
        float(num_tokens),
        float(log_likelihood) / max(1, num_tokens),
        float(min(logprobs)),
        0.0 if margin is None else float(margin),
        0.0 if finished else 1.0,
        1.0 if repeated_ngram else 0.0,
        1.0 if has_unknown else 0.0,
    ]


@dataclass
class Calibrator:
    """P(right | signals) = sigmoid(bias + weights . (signals - mean) / scale)."""

    weights: list[float]
    bias: float
    mean: list[float]
    scale: list[float]
    signals: list[str] = field(default_factory=lambda: list(SIGNALS))
    # What it was fitted on and how well it did there (out of fold): for the record and stats.
    source: str = "validation"  # "validation" (end of training) or "reviews" (labeler calibrate)
    criterion: str = ""  # what "right" meant, e.g. "objects right" or "accepted unchanged"
    examples: int = 0
    positives: int = 0
    auroc: float | None = None
    ece: float | None = None
    signal_auroc: dict[str, float | None] = field(default_factory=dict)
    settings_key: str | None = None  # the decoding settings of the drafts it was fitted on

    def predict(self, rows: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
        """Signal rows (N, len(signals)) -> p_accept (N,) in (0, 1)."""
        x = np.asarray(rows, dtype=np.float64).reshape(-1, len(self.signals))
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        return _sigmoid(self.bias + z @ np.asarray(self.weights))

    def predict_one(self, signals: Sequence[float]) -> float:
        return float(self.predict([signals])[0])

    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> Calibrator:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError("not a labeler calibrator")
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise InputError("calibrator is newer than this labeler reads; upgrade labeler")
        values = {k: v for k, v in data.items() if k not in ("format", "format_version")}
        calibrator = cls(**values)
        if list(calibrator.signals) != list(SIGNALS):
            raise InputError(f"calibrator uses signals {calibrator.signals}, not {list(SIGNALS)}")
        return calibrator


def fit(
    rows: Sequence[Sequence[float]] | np.ndarray,
    right: Sequence[bool] | np.ndarray,
    *,
    source: str,
    criterion: str,
    folds: int = 5,
    l2: float = 1.0,
    settings_key: str | None = None,
) -> Calibrator:
    """Fit on every example; quality figures from `folds`-fold out-of-fold predictions."""
    x = np.asarray(rows, dtype=np.float64).reshape(-1, len(SIGNALS))
    y = np.asarray(right, dtype=np.float64)
    check_enough(y)
    calibrator = _fit(x, y, l2)
    held_out = cross_validated(x, y, folds=folds, l2=l2)
    calibrator.source, calibrator.criterion, calibrator.settings_key = (
        source,
        criterion,
        settings_key,
    )
    calibrator.examples, calibrator.positives = len(y), int(y.sum())
    calibrator.auroc = auroc(held_out, y)
    calibrator.ece = expected_calibration_error(held_out, y)
    calibrator.signal_auroc = {name: auroc(x[:, i], y) for i, name in enumerate(SIGNALS)}
    return calibrator


def check_enough(right: Sequence[bool] | np.ndarray) -> None:
    """Raise InputError saying how many more examples are needed, when too few to fit."""
    y = np.asarray(right, dtype=bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if len(y) >= MIN_EXAMPLES and pos >= MIN_EACH and neg >= MIN_EACH:
        return
    raise InputError(
        f"too few judged drafts to calibrate: {len(y)} ({pos} right, {neg} wrong); need at "
        f"least {MIN_EXAMPLES}, with {MIN_EACH} right and {MIN_EACH} wrong"
    )


def cross_validated(x: np.ndarray, y: np.ndarray, *, folds: int = 5, l2: float = 1.0) -> np.ndarray:
    """Out-of-fold predictions: each example scored by a model fitted without it. Folds are
    interleaved by position (deterministic), stratified so each holds right and wrong drafts."""
    order = np.argsort(y, kind="stable")  # wrong first, then right; interleave into folds
    fold_of = np.empty(len(y), dtype=np.int64)
    fold_of[order] = np.arange(len(y)) % max(2, folds)
    out = np.empty(len(y))
    for k in range(max(2, folds)):
        test = fold_of == k
        if not test.any():
            continue
        train = ~test
        if y[train].min() == y[train].max():  # one class left: no ranking to learn
            out[test] = y[train].mean()
            continue
        out[test] = _fit(x[train], y[train], l2).predict(x[test])
    return out


def _fit(x: np.ndarray, y: np.ndarray, l2: float) -> Calibrator:
    """L2-penalised logistic regression by Newton's method on standardised signals."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0  # a constant signal (e.g. no margin at beam 1) weighs nothing
    z = np.hstack([np.ones((len(x), 1)), (x - mean) / scale])  # (N, 1 + S)
    w = np.zeros(z.shape[1])
    w[0] = math.log((y.mean() + 1e-3) / (1 - y.mean() + 1e-3))
    penalty = np.full(z.shape[1], l2)
    penalty[0] = 0.0  # the bias is not shrunk
    for _ in range(50):
        p = _sigmoid(z @ w)
        gradient = z.T @ (p - y) + penalty * w
        hessian = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return Calibrator(
        weights=w[1:].tolist(), bias=float(w[0]), mean=mean.tolist(), scale=scale.tolist()
    )


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))  # stable for any z


def auroc(scores: Iterable[float], right: Iterable[bool]) -> float | None:
    """Area under the ROC curve of `scores` for the right examples (ties count half); None
    unless there are both right and wrong ones."""
    s = np.asarray(list(scores) if not isinstance(scores, np.ndarray) else scores, np.float64)
    y = np.asarray(list(right) if not isinstance(right, np.ndarray) else right, dtype=bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if not positives or not negatives:
        return None
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2
    return ranks


@dataclass
class CalibrationBand:
    low: float
    high: float
    count: int = 0
    predicted: float | None = None  # mean p_accept in the band
    observed: float | None = None  # share right (accepted) in the band


def calibration_table(
    p: Iterable[float], right: Iterable[bool], *, bins: int = ECE_BINS
) -> list[CalibrationBand]:
    """Equal-width bands of p: how many, the mean prediction and the observed share right."""
    p = np.asarray(list(p) if not isinstance(p, np.ndarray) else p, np.float64)
    y = np.asarray(list(right) if not isinstance(right, np.ndarray) else right, np.float64)
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    bands = []
    for b in range(bins):
        members = index == b
        band = CalibrationBand(b / bins, (b + 1) / bins, int(members.sum()))
        if band.count:
            band.predicted = float(p[members].mean())
            band.observed = float(y[members].mean())
        bands.append(band)
    return bands


def expected_calibration_error(
    p: Iterable[float], right: Iterable[bool], *, bins: int = ECE_BINS
) -> float | None:
    """Sum over equal-width bands of (share of examples) x |mean prediction - share right|."""
    table = calibration_table(p, right, bins=bins)
    total = sum(band.count for band in table)
    if not total:
        return None
    gaps = [band.count * abs(band.predicted - band.observed) for band in table if band.count]
    return float(sum(gaps) / total)
