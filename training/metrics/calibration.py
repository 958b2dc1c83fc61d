"""Score calibration: raw detection scores -> log-likelihood ratios, fitted on dev by logistic regression.

actDCF thresholds scores at the Bayes decision for LLRs and Cllr measures LLR quality, so both are only meaningful
after calibration. The fit is the standard prior-weighted logistic regression (Brümmer): with each class carrying
half of the total weight, `scale * score + bias` is an LLR (natural log), independent of the dev class balance.

A stored calibration must keep the raw ranking (scale > 0): a negative scale would silently flip every verdict of
the shipped model. When the best monotone fit is flat (dev scores rank bona fide at or below spoof), none is stored.

`fit_logistic_regression` is the project's one logistic-regression fitter (also used by the MFCC baseline).
"""

import logging
from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy.optimize import minimize

from modeling_molex.outputs import calibrate_scores


logger = logging.getLogger(__name__)
FLAT_SCALE = 1e-6  # a fitted (standardised) scale at or below this is "no information": not stored


def fit_logistic_regression(
    x: ArrayLike, y: ArrayLike, l2: float = 0.0, lower_bounds: Sequence[float | None] | None = None
) -> tuple[np.ndarray, float]:
    """Class-balanced logistic regression by L-BFGS-B: each class carries half of the total weight, bona fide (1)
    is the positive class, and an optional L2 penalty (`l2 / n * |w|^2 / 2`) applies to the weights, not the bias.
    `lower_bounds` (one per feature, None for unbounded) constrains the weights, e.g. to keep a calibration monotone.
    Returns (weights, bias)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"x must be (n, d) and y (n,), got {x.shape} and {y.shape}")
    n_positive, n_negative = int((y == 1).sum()), int((y == 0).sum())
    if n_positive == 0 or n_negative == 0:
        raise ValueError("logistic regression needs both classes (bona fide = 1 and spoof = 0)")
    sample_weight = np.where(y == 1, 0.5 / n_positive, 0.5 / n_negative)
    sign = np.where(y == 1, 1.0, -1.0)
    penalty = l2 / len(y)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        margin = sign * (x @ theta[:-1] + theta[-1])
        value = np.sum(sample_weight * np.logaddexp(0.0, -margin)) + 0.5 * penalty * theta[:-1] @ theta[:-1]
        slope = -sample_weight * sign * 0.5 * (1 - np.tanh(margin / 2))  # d loss / d logit, overflow-free sigmoid
        return value, np.concatenate([x.T @ slope + penalty * theta[:-1], [slope.sum()]])

    bounds = None
    if lower_bounds is not None:
        if len(lower_bounds) != x.shape[1]:
            raise ValueError(f"lower_bounds needs one entry per feature ({x.shape[1]}), got {len(lower_bounds)}")
        bounds = [(low, None) for low in lower_bounds] + [(None, None)]
    start = np.zeros(x.shape[1] + 1)
    if bounds is not None:
        start[:-1] = [0.0 if low is None else max(0.0, low) for low in lower_bounds]
    result = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 2000})
    return result.x[:-1], float(result.x[-1])


def fit_llr_calibration(scores: ArrayLike, labels: ArrayLike) -> dict[str, float] | None:
    """Fit `{"scale": a, "bias": b}` with a > 0 so that `a * score + b` is a calibrated LLR (labels: 1 = bonafide).

    Returns None (and logs a warning) when no increasing calibration carries information, i.e. the dev scores rank
    bona fide below spoof: storing a reversing one would flip every verdict."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D of equal length, got {scores.shape} and {labels.shape}")
    if not (labels == 1).any() or not (labels == 0).any():
        raise ValueError("calibration needs both bona fide and spoof scores")
    if not np.isfinite(scores).all():
        raise ValueError("calibration scores must be finite")
    center = scores.mean()
    spread = scores.std() or 1.0
    (scale,), bias = fit_logistic_regression(((scores - center) / spread)[:, None], labels, lower_bounds=[0.0])
    if scale <= FLAT_SCALE:
        logger.warning(
            "Score calibration not stored: the dev scores rank bona fide at or below spoof (the best increasing "
            "calibration is flat), and a decreasing one would reverse every verdict. Scores stay uncalibrated."
        )
        return None
    # Undo the standardisation: a * (s - c) / d + b = (a / d) * s + (b - a c / d).
    return {"scale": float(scale / spread), "bias": float(bias - scale * center / spread)}


def apply_calibration(scores: ArrayLike, calibration: dict[str, float] | None) -> np.ndarray:
    """The model's own calibration (`modeling_molex.outputs.calibrate_scores`) on a numpy array of raw scores."""
    return calibrate_scores(torch.as_tensor(np.asarray(scores, dtype=np.float64)), calibration).numpy()
