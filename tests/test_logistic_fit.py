"""The shared class-balanced logistic regression (calibration, MFCC baseline), checked against its documented
objective: the returned point is where the objective's numerical gradient vanishes (so a wrong penalty or a wrong
analytic gradient moves it), the penalty shrinks weights, bounds hold, and bad inputs name what is wrong."""

import numpy as np
import pytest
from scipy.optimize import approx_fprime

from training.metrics.calibration import fit_logistic_regression


def data(seed: int = 0, n1: int = 60, n0: int = 140) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal([1.0, -0.5], 1.0, (n1, 2)), rng.normal([-0.5, 0.5], 1.0, (n0, 2))])
    return x, np.concatenate([np.ones(n1, dtype=int), np.zeros(n0, dtype=int)])


def documented_objective(theta: np.ndarray, x: np.ndarray, y: np.ndarray, l2: float) -> float:
    """Each class carries half the weight; L2 penalty l2 / n * |w|^2 / 2 on the weights only."""
    logit = x @ theta[:-1] + theta[-1]
    positive = np.logaddexp(0.0, -logit[y == 1]).mean()
    negative = np.logaddexp(0.0, logit[y == 0]).mean()
    return 0.5 * positive + 0.5 * negative + 0.5 * (l2 / len(y)) * theta[:-1] @ theta[:-1]


@pytest.mark.parametrize("l2", [0.0, 50.0])
def test_the_fit_is_the_minimum_of_the_documented_objective(l2):
    x, y = data()
    weights, bias = fit_logistic_regression(x, y, l2=l2)
    theta = np.concatenate([weights, [bias]])
    gradient = approx_fprime(theta, documented_objective, 1e-7, x, y, l2)
    assert np.abs(gradient).max() < 1e-4
    assert weights[0] > 0 and weights[1] < 0  # bona fide = the positive class


def test_the_penalty_shrinks_the_weights_but_not_the_bias_term():
    x, y = data(seed=1)
    free, _ = fit_logistic_regression(x, y)
    shrunk, _ = fit_logistic_regression(x, y, l2=200.0)
    assert np.linalg.norm(shrunk) < 0.8 * np.linalg.norm(free)


def test_lower_bounds_hold_and_start_inside_them():
    x, y = data(seed=2)
    weights, _ = fit_logistic_regression(x, y, lower_bounds=[None, 0.0])  # the second weight wants to be < 0
    assert weights[1] == pytest.approx(0.0, abs=1e-9) and weights[0] > 0
    raised, _ = fit_logistic_regression(x, y, lower_bounds=[2.5, None])
    assert raised[0] >= 2.5 - 1e-9
    theta = np.concatenate([weights, [fit_logistic_regression(x, y, lower_bounds=[None, 0.0])[1]]])
    assert documented_objective(theta, x, y, 0.0) <= documented_objective(np.array([weights[0], 0.0, 0.0]), x, y, 0.0)


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "message"),
    [
        (np.zeros(4), [0, 1, 0, 1], {}, r"^x must be \(n, d\) and y \(n,\), got \(4,\) and \(4,\)$"),
        (np.zeros((4, 1)), [0, 1, 0], {}, r"^x must be \(n, d\) and y \(n,\), got \(4, 1\) and \(3,\)$"),
        (np.zeros((3, 1)), [1, 1, 1], {}, r"^logistic regression needs both classes \(bona fide = 1 and spoof = 0\)$"),
        (np.zeros((3, 1)), [0, 0, 0], {}, r"^logistic regression needs both classes"),
        (
            np.zeros((4, 2)),
            [0, 1, 0, 1],
            {"lower_bounds": [0.0]},
            r"^lower_bounds needs one entry per feature \(2\), got 1$",
        ),
    ],
)
def test_bad_inputs_name_the_problem(x, y, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit_logistic_regression(x, y, **kwargs)


def test_one_example_per_class_is_enough():
    weights, bias = fit_logistic_regression([[1.0], [-1.0]], [1, 0], l2=1.0)
    assert weights[0] > 0 and abs(bias) < 1e-6
