"""`labeler calibrate`: refit p_accept's calibrator on the store's reviews, and rescore.

The examples are the best drafts of one model and decoding settings that have a review, judged
as `labeler stats` judges them (the review that counts for each draft, store/drafts.py
`latest_review`: the newest made on that draft or on the same text for the image, so a review of
an earlier, different draft teaches nothing about this one; accepted unchanged is right, edited
and rejected are wrong, skipped ones are left out), and their signals come from the
fields stored with each draft, so nothing is decoded again. The fit (labeler/calibration.py)
reports out-of-fold AUROC and calibration error, shown beside the AUROC of each raw signal and
of the p_accept the drafts had before.

Storing is all or nothing: one write transaction reads the reviews, adds the calibrator as the
model's next version and rescores every draft of that model and settings (all ranks, a chunk at
a time), with the model locked so no caption batch writes drafts scored by the old calibrator
meanwhile (store/calibrators.py). Too few reviews, or a dry run, changes nothing.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

import numpy as np

from labeler import calibration
from labeler.errors import InputError
from labeler.review.stats import accepted, signals
from labeler.store import Store
from labeler.store import calibrators as calibrator_store
from labeler.store.drafts import DraftFilter, Selection, iter_drafts, resolve

CRITERION = "accepted unchanged"
JUDGED = ["accepted", "edited", "rejected"]  # review states that judge a draft


@dataclass
class CalibrateResult:
    model: str
    settings_key: str
    examples: int  # reviewed best drafts fitted on
    positives: int  # of them accepted unchanged
    folds: int
    auroc: float | None  # the fit's, out of fold
    ece: float | None  # the fit's expected calibration error, out of fold
    # AUROC for acceptance of each raw signal, of confidence and of the p_accept stored before.
    signal_auroc: dict[str, float | None] = field(default_factory=dict)
    version: int | None = None  # the calibrator's version in the store; None on a dry run
    rescored: int = 0  # drafts whose p_accept was recomputed
    dry_run: bool = False


def calibrate(
    store: Store,
    *,
    model: str | None = None,
    settings_key: str | None = None,
    folds: int = 5,
    dry_run: bool = False,
) -> CalibrateResult:
    """Fit a calibrator on the reviews of one model and settings (default: the newest run's);
    unless `dry_run`, store it and rescore every draft of that model and settings."""
    if folds < 2:
        raise InputError("--folds must be at least 2")
    spec = DraftFilter(model=model, settings_key=settings_key)
    if dry_run:
        with store.session() as session:
            return _fit(session, resolve(session, spec), folds)[0]
    with store.write() as session:
        chosen = resolve(session, spec)
        calibrator_store.lock_model(session, chosen.model_id, exclusive=True)
        result, fitted = _fit(session, chosen, folds)
        stored = calibrator_store.add(session, model_id=chosen.model_id, calibrator=fitted)
        scoring = calibrator_store.Scoring(stored.id, fitted)
        result.rescored = calibrator_store.rescore(
            session, model_id=chosen.model_id, settings_key=chosen.settings_key, scoring=scoring
        )
        result.version, result.dry_run = stored.version, False
    return result


def _fit(session, chosen: Selection, folds: int) -> tuple[CalibrateResult, calibration.Calibrator]:  # type: ignore[no-untyped-def]
    """The judged drafts' signals, and the calibrator fitted on them (InputError: too few)."""
    rows, confidence, p_accept, right = array("d"), array("d"), array("d"), array("b")
    spec = DraftFilter(model=chosen.model_hash, settings_key=chosen.settings_key, review=JUDGED)
    for row in iter_drafts(session, spec, sort="id"):
        judged = accepted(row)
        if judged is None:  # not expected with the review filter; the rule is stats'
            continue
        rows.extend(signals(row))
        confidence.append(row.confidence)
        p_accept.append(row.p_accept)
        right.append(judged)
    y = np.frombuffer(right, np.int8).astype(bool)
    x = np.frombuffer(rows, np.float64).reshape(-1, len(calibration.SIGNALS))
    fitted = calibration.fit(x, y, source="reviews", criterion=CRITERION, folds=folds,
                             settings_key=chosen.settings_key)  # fmt: skip
    scores = {
        **fitted.signal_auroc,
        "confidence": calibration.auroc(np.frombuffer(confidence, np.float64), y),
        "p_accept before": calibration.auroc(np.frombuffer(p_accept, np.float64), y),
    }
    result = CalibrateResult(
        model=f"{chosen.model_name} ({chosen.model_hash[:12]})",
        settings_key=chosen.settings_key, examples=fitted.examples, positives=fitted.positives,
        folds=max(2, folds), auroc=fitted.auroc, ece=fitted.ece, signal_auroc=scores,
        dry_run=True,
    )  # fmt: skip
    return result, fitted
