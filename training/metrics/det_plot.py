"""DET curves (miss rate vs false-alarm rate on normal-deviate axes) saved as PNG.

On normal-deviate (probit) axes, Gaussian score distributions give straight lines, which is why speaker and spoofing
evaluations plot DET rather than ROC curves. The curve is the official package's one (see training/metrics/asvspoof_metrics.py), and
the marked point is the DET point the official EER is read from.
"""

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from scipy.special import ndtri

from training.metrics.asvspoof_metrics import compute_det_curve, eer_from_det_curve, split_by_label


# Rates are clipped to this range so that 0 and 1 (infinite on a probit axis) land on the frame.
RATE_LIMITS = (1e-4, 0.995)
TICKS_PERCENT = (0.01, 0.1, 1, 2, 5, 10, 20, 40, 60, 80, 95, 99)
MAX_POINTS = 20_000  # more than a PNG can show; big score sets are thinned to this many points


def _probit(rates: np.ndarray) -> np.ndarray:
    return ndtri(np.clip(rates, *RATE_LIMITS))


def draw_det_curve(
    ax: Axes, scores: ArrayLike, labels: ArrayLike, label: str | None = None
) -> tuple[float, float, float]:
    """Draw one system's DET curve on `ax` (probit coordinates) and mark its EER point.

    Returns (eer, far, frr): the official EER and the false-alarm / miss rates of the DET point it comes from.
    """
    frr, far, thresholds = compute_det_curve(*split_by_label(scores, labels))
    eer, _, index = eer_from_det_curve(frr, far, thresholds)
    keep = np.arange(frr.size)
    if frr.size > MAX_POINTS:
        keep = np.unique(np.r_[np.linspace(0, frr.size - 1, MAX_POINTS).astype(int), index])
    line = ax.plot(_probit(far[keep]), _probit(frr[keep]), label=f"{label or 'system'} (EER {100 * eer:.2f}%)")[0]
    ax.plot(
        _probit(far[index : index + 1]),
        _probit(frr[index : index + 1]),
        marker="o",
        markersize=7,
        markerfacecolor="none",
        color=line.get_color(),
        linestyle="none",
    )
    return eer, float(far[index]), float(frr[index])


def _style_axes(ax: Axes, title: str) -> None:
    low, high = _probit(np.array(RATE_LIMITS))
    ax.plot([low, high], [low, high], color="0.75", linewidth=0.8, linestyle="--", zorder=0)  # frr = far
    positions, names = _probit(np.array(TICKS_PERCENT) / 100), [f"{value:g}" for value in TICKS_PERCENT]
    ax.set_xticks(positions, names)
    ax.set_yticks(positions, names)
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel("False alarm rate: spoof accepted (%)")
    ax.set_ylabel("Miss rate: bona fide rejected (%)")
    ax.set_title(title)
    ax.grid(True, linewidth=0.4, alpha=0.6)
    ax.legend(loc="upper right", fontsize="small")


def save_det_plot(
    path: str | Path, systems: Mapping[str, tuple[ArrayLike, ArrayLike]], *, title: str = "DET curve"
) -> dict[str, float]:
    """Plot {name: (scores, labels)} as DET curves into the PNG at `path`; returns {name: EER (fraction)}.

    Uses the Agg canvas directly (no pyplot), so it works headless and leaves matplotlib's global state alone.
    """
    if not systems:
        raise ValueError("save_det_plot needs at least one system")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"DET plots are written as PNG; got the path {path}")
    figure = Figure(figsize=(5.5, 5.5), dpi=120)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    eers = {name: draw_det_curve(ax, scores, labels, label=name)[0] for name, (scores, labels) in systems.items()}
    _style_axes(ax, title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return eers
