"""Score calibration (raw score -> LLR) on inputs whose answer is known in closed form.

For Gaussian class scores with equal variance, bona fide ~ N(m1, s^2) and spoof ~ N(m0, s^2), the true LLR of a score
x is ((m1 - m0) / s^2) * x - (m1^2 - m0^2) / (2 s^2); the prior-weighted logistic fit must recover it whatever the
class balance, and `apply_calibration` must apply exactly `scale * score + bias`.
"""

import numpy as np
import pytest

from training.metrics.calibration import apply_calibration, fit_llr_calibration


def gaussian_scores(m1: float, m0: float, sigma: float, n1: int, n0: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(m1, sigma, n1), rng.normal(m0, sigma, n0)])
    labels = np.concatenate([np.ones(n1, dtype=int), np.zeros(n0, dtype=int)])
    return scores, labels


@pytest.mark.parametrize(("n1", "n0"), [(3000, 3000), (1000, 9000), (9000, 1000)])
def test_fit_recovers_the_true_llr_whatever_the_class_balance(n1, n0):
    m1, m0, sigma = 4.0, 1.0, 1.5  # LLR(x) = (3 / 2.25) x - (16 - 1) / 4.5
    scores, labels = gaussian_scores(m1, m0, sigma, n1, n0)
    calibration = fit_llr_calibration(scores, labels)
    assert calibration["scale"] == pytest.approx((m1 - m0) / sigma**2, rel=0.06)
    assert calibration["bias"] == pytest.approx(-(m1**2 - m0**2) / (2 * sigma**2), rel=0.06)


def test_fit_is_invariant_to_an_affine_distortion_of_the_scores():
    """Scores a * x + b calibrate to the same LLRs as x: the fit undoes its own standardisation exactly."""
    scores, labels = gaussian_scores(1.0, -1.0, 1.0, 2000, 2000, seed=1)
    plain = fit_llr_calibration(scores, labels)
    distorted = fit_llr_calibration(scores * 7.0 - 30.0, labels)
    probe = np.array([-2.0, 0.0, 1.5])
    np.testing.assert_allclose(
        apply_calibration(probe * 7.0 - 30.0, distorted), apply_calibration(probe, plain), rtol=1e-3, atol=1e-3
    )


def test_fit_minimises_the_prior_weighted_cross_entropy():
    """No nearby (scale, bias) does better on the objective the docstring names."""
    scores, labels = gaussian_scores(2.0, 0.0, 1.0, 300, 700, seed=2)

    def objective(scale: float, bias: float) -> float:
        z = scale * scores + bias
        return 0.5 * np.logaddexp(0, -z[labels == 1]).mean() + 0.5 * np.logaddexp(0, z[labels == 0]).mean()

    fit = fit_llr_calibration(scores, labels)
    best = objective(fit["scale"], fit["bias"])
    for d_scale, d_bias in [(0.02, 0), (-0.02, 0), (0, 0.02), (0, -0.02)]:
        assert best < objective(fit["scale"] + d_scale, fit["bias"] + d_bias)


def test_separable_direction_is_right():
    """Higher score = more bona fide: the fitted scale is positive when bona fide scores are higher; a reversed
    convention gets no calibration (None) rather than a negative scale that would flip every verdict."""
    scores, labels = gaussian_scores(1.0, 0.0, 1.0, 500, 500, seed=3)
    assert fit_llr_calibration(scores, labels)["scale"] > 0
    assert fit_llr_calibration(-scores, labels) is None


def test_apply_calibration_is_affine_and_none_is_identity():
    scores = [0.0, 1.0, -2.0]
    np.testing.assert_array_equal(apply_calibration(scores, None), np.array(scores))
    np.testing.assert_allclose(apply_calibration(scores, {"scale": 2.0, "bias": -1.0}), [-1.0, 1.0, -5.0])
    assert apply_calibration([0, 1, 2], None).dtype == np.float64  # integer scores come back as float64 LLRs


def test_fit_computes_in_float64_whatever_the_input_dtype():
    """float32 scores (a model's output) give the very same calibration as their float64 copy."""
    scores, labels = gaussian_scores(1.0, -1.0, 1.0, 500, 500, seed=4)
    low = scores.astype(np.float32)
    from_float32 = fit_llr_calibration(low, labels)
    from_float64 = fit_llr_calibration(low.astype(np.float64), labels)
    assert from_float32 == from_float64


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.0, 1.0], [1], "^scores and labels must be 1-D of equal length"),
        ([[0.0, 1.0]], [[1, 0]], "^scores and labels must be 1-D of equal length"),
        ([0.0, 1.0], [1, 1], "^calibration needs both bona fide and spoof scores$"),
        ([0.0, 1.0], [0, 0], "^calibration needs both bona fide and spoof scores$"),
        ([0.0, np.inf], [0, 1], "^calibration scores must be finite$"),
        ([np.nan, 1.0], [0, 1], "^calibration scores must be finite$"),
    ],
)
def test_bad_inputs_are_refused_with_the_reason(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        fit_llr_calibration(scores, labels)


def test_constant_scores_do_not_divide_by_zero():
    """All scores equal (a dead system): no division by a zero spread, and no calibration is stored, since a flat
    one carries no information (every clip would get the same verdict)."""
    assert fit_llr_calibration([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0]) is None
