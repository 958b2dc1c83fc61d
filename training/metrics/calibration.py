"""Score calibration: raw detection scores -> log-likelihood ratios, fitted on dev by logistic regression.

actDCF thresholds scores at the Bayes decision for LLRs and Cllr measures LLR quality, so both are only meaningful
after calibration. The fit is the standard prior-weighted logistic regression (Brümmer): with each class carrying
half of the total weight, `scale * score + bias` is an LLR (natural log), independent of the dev class balance.
"""

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy.optimize import minimize

from modeling_molex.outputs import calibrate_scores


def fit_llr_calibration(scores: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """Fit `{"scale": a, "bias": b}` so that `a * score + b` is a calibrated LLR (labels: 1 = bonafide)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D of equal length, got {scores.shape} and {labels.shape}")
    bonafide, spoof = scores[labels == 1], scores[labels == 0]
    if len(bonafide) == 0 or len(spoof) == 0:
        raise ValueError("calibration needs both bona fide and spoof scores")
    if not np.isfinite(scores).all():
        raise ValueError("calibration scores must be finite")
    center = scores.mean()
    spread = scores.std() or 1.0

    def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
        scale, bias = params
        z_bona = scale * (bonafide - center) / spread + bias
        z_spoof = scale * (spoof - center) / spread + bias
        # 0.5 * E_bona[log(1 + e^-z)] + 0.5 * E_spoof[log(1 + e^z)], with its gradient
        loss = 0.5 * np.logaddexp(0, -z_bona).mean() + 0.5 * np.logaddexp(0, z_spoof).mean()
        grad_bona = -0.5 / (1 + np.exp(z_bona)) / len(bonafide)
        grad_spoof = 0.5 / (1 + np.exp(-z_spoof)) / len(spoof)
        d_scale = (grad_bona * (bonafide - center) / spread).sum() + (grad_spoof * (spoof - center) / spread).sum()
        d_bias = grad_bona.sum() + grad_spoof.sum()
        return loss, np.array([d_scale, d_bias])

    result = minimize(objective, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    scale, bias = result.x
    # Undo the standardisation: a * (s - c) / d + b = (a / d) * s + (b - a c / d).
    return {"scale": float(scale / spread), "bias": float(bias - scale * center / spread)}


def apply_calibration(scores: ArrayLike, calibration: dict[str, float] | None) -> np.ndarray:
    """The model's own calibration (`modeling_molex.outputs.calibrate_scores`) on a numpy array of raw scores."""
    return calibrate_scores(torch.as_tensor(np.asarray(scores, dtype=np.float64)), calibration).numpy()
