"""The dev-set calibration fit never stores a calibration that reverses the ranking; the one logistic fitter."""

import logging

import numpy as np
import pytest

from training.metrics.calibration import apply_calibration, fit_llr_calibration, fit_logistic_regression


def test_a_calibration_that_would_reverse_the_ranking_is_not_stored(caplog):
    """Raw scores that rank spoof above bona fide (an undertrained model) must not get a negative scale: that
    would flip every verdict of the shipped model. The fit refuses (None) and says so in the log."""
    rng = np.random.default_rng(1)
    bonafide, spoof = rng.normal(-1, 1, 200), rng.normal(1, 1, 200)  # reversed: bona fide scores lower
    scores = np.concatenate([bonafide, spoof])
    labels = np.concatenate([np.ones(200), np.zeros(200)])
    with caplog.at_level(logging.WARNING, logger="training.metrics.calibration"):
        fitted = fit_llr_calibration(scores, labels)
    assert fitted is None
    assert caplog.messages == [
        "Score calibration not stored: the dev scores rank bona fide at or below spoof (the best increasing "
        "calibration is flat), and a decreasing one would reverse every verdict. Scores stay uncalibrated."
    ]
    # Scores that rank correctly keep a positive scale, and the calibrated scores keep the raw order.
    fitted = fit_llr_calibration(-scores, labels)
    assert fitted is not None and fitted["scale"] > 0
    calibrated = apply_calibration(-scores, fitted)
    assert np.array_equal(np.argsort(calibrated, kind="stable"), np.argsort(-scores, kind="stable"))


def test_the_logistic_fitter_separates_two_gaussian_classes_in_two_dimensions():
    """The one logistic-regression fitter (calibration and the MFCC baseline): class-balanced, bona fide positive;
    on data whose Bayes boundary is x0 + x1 = 0 the weights point along (1, 1)."""
    rng = np.random.default_rng(2)
    positive = rng.normal([1.0, 1.0], 1.0, size=(3000, 2))
    negative = rng.normal([-1.0, -1.0], 1.0, size=(9000, 2))
    x = np.concatenate([positive, negative])
    y = np.concatenate([np.ones(3000), np.zeros(9000)])
    weights, bias = fit_logistic_regression(x, y)
    assert weights[0] == pytest.approx(weights[1], rel=0.15) and weights[0] == pytest.approx(2.0, rel=0.15)
    assert bias == pytest.approx(0.0, abs=0.2)  # balanced: the 1:3 class ratio does not shift the boundary
    constrained, _ = fit_logistic_regression(-x, y, lower_bounds=[0.0, 0.0])
    assert np.all(constrained >= 0)
