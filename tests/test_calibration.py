"""p_accept's calibrator: the fit recovers a known logistic model, its quality figures are out of
fold, AUROC and ECE match hand computations, too little data says how much is needed, and the
calibrator survives its plain-data form."""

from __future__ import annotations

import numpy as np
import pytest

from labeler.calibration import (
    SIGNALS,
    Calibrator,
    auroc,
    calibration_table,
    check_enough,
    cross_validated,
    draft_signals,
    expected_calibration_error,
    fit,
)
from labeler.errors import InputError


def _drafts(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signal rows where right drafts follow a known logistic model of log_likelihood alone."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(SIGNALS)))
    x[:, 0] = rng.uniform(-12, 0, n)  # log_likelihood
    p = 1 / (1 + np.exp(-(1.5 * (x[:, 0] + 6))))
    return x, rng.random(n) < p, p


def test_draft_signals_are_derived_from_the_stored_fields():
    row = draft_signals(-3.0, 3, [-0.5, -2.0, -0.5], 0.7, False, True, False)
    assert row == [-3.0, 3.0, -1.0, -2.0, 0.7, 1.0, 1.0, 0.0]
    assert draft_signals(-1.0, 1, [-1.0], None, True, False, True)[4:] == [0.0, 0.0, 0.0, 1.0]


def test_the_fit_recovers_a_known_model_and_is_calibrated():
    x, y, p_true = _drafts(4000)
    calibrator = fit(x, y, source="validation", criterion="test")
    p = calibrator.predict(x)
    assert np.abs(p - p_true).mean() < 0.03
    weights = np.abs(np.asarray(calibrator.weights))
    assert weights.argmax() == 0 and weights[1:].max() < 0.2 * weights[0]
    assert calibrator.auroc == pytest.approx(auroc(p_true, y), abs=0.01)
    assert calibrator.ece < 0.03
    assert calibrator.examples == 4000 and calibrator.positives == int(y.sum())
    assert calibrator.signal_auroc["log_likelihood"] > 0.85
    assert abs(calibrator.signal_auroc["num_tokens"] - 0.5) < 0.05  # noise


def test_quality_figures_are_out_of_fold():
    """On pure noise a fitted model looks better than chance in sample, never out of fold."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, len(SIGNALS)))
    y = rng.random(40) < 0.5
    calibrator = fit(x, y, source="validation", criterion="test", l2=1e-6)
    in_sample = auroc(calibrator.predict(x), y)
    assert in_sample > 0.7
    assert calibrator.auroc < 0.55 < in_sample - 0.2
    held_out = cross_validated(x, y.astype(float), folds=5, l2=1e-6)
    assert auroc(held_out, y) == pytest.approx(calibrator.auroc)


def test_auroc_by_hand_with_ties():
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert auroc([0.5, 0.5, 0.5], [True, False, True]) == 0.5
    assert auroc([0.2, 0.9], [True, True]) is None


def test_calibration_table_and_ece_by_hand():
    p = [0.05, 0.15, 0.15, 0.95]
    y = [False, True, False, True]
    table = calibration_table(p, y, bins=10)
    assert [band.count for band in table] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert table[1].predicted == pytest.approx(0.15) and table[1].observed == 0.5
    assert table[2].predicted is None
    # |0.05 - 0| * 1/4 + |0.15 - 0.5| * 2/4 + |0.95 - 1| * 1/4
    assert expected_calibration_error(p, y) == pytest.approx(0.0125 + 0.175 + 0.0125)
    assert expected_calibration_error([], []) is None


def test_too_few_examples_say_how_many_are_needed():
    with pytest.raises(InputError, match=r"12 \(10 right, 2 wrong\); need at least 30"):
        check_enough([True] * 10 + [False] * 2)
    x, y, _ = _drafts(200)
    with pytest.raises(InputError, match="too few judged drafts"):
        fit(x, np.ones(200, bool), source="reviews", criterion="accepted unchanged")


def test_plain_data_round_trip_and_foreign_data():
    x, y, _ = _drafts(300)
    calibrator = fit(x, y, source="reviews", criterion="accepted unchanged", settings_key="abc")
    again = Calibrator.from_dict(calibrator.to_dict())
    assert again == calibrator
    assert np.array_equal(again.predict(x), calibrator.predict(x))
    assert 0 < calibrator.predict_one(x[0]) < 1
    with pytest.raises(InputError, match="not a labeler calibrator"):
        Calibrator.from_dict({"weights": []})
    with pytest.raises(InputError, match="newer"):
        Calibrator.from_dict({**calibrator.to_dict(), "format_version": 99})
