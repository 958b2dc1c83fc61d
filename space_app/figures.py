"""The demo's two figures, drawn with matplotlib's object API (no pyplot state, safe in server threads)."""

import numpy as np
from matplotlib.figure import Figure


__all__ = ["expert_usage_figure", "timeline_figure"]

BONAFIDE_COLOR, SPOOF_COLOR = "#2a9d8f", "#e76f51"


def timeline_figure(
    window_starts_s: list[float],
    window_scores: list[float],
    window_seconds: float,
    clip_score: float,
    calibrated: bool,
    threshold: float = 0.0,
) -> Figure:
    """Score of each window against the time of its centre, with the decision threshold and the clip's mean."""
    centres = np.asarray(window_starts_s) + window_seconds / 2
    scores = np.asarray(window_scores)
    figure = Figure(figsize=(7.5, 3.3), layout="constrained")
    axes = figure.add_subplot()
    span = max(float(np.abs(scores - threshold).max()), abs(clip_score - threshold), 1e-3) * 1.25
    axes.axhspan(threshold, threshold + span, color=BONAFIDE_COLOR, alpha=0.08)
    axes.axhspan(threshold - span, threshold, color=SPOOF_COLOR, alpha=0.08)
    axes.axhline(threshold, color="0.4", linewidth=1, label=f"threshold ({threshold:g})")
    axes.axhline(clip_score, color="0.2", linestyle="--", linewidth=1, label=f"clip score = mean ({clip_score:+.3f})")
    colors = [BONAFIDE_COLOR if s >= threshold else SPOOF_COLOR for s in scores]
    axes.plot(centres, scores, color="0.55", linewidth=1, zorder=2)
    axes.scatter(centres, scores, c=colors, s=28, zorder=3)
    axes.set_ylim(threshold - span, threshold + span)
    axes.set_xlabel(f"time (s), centre of each {window_seconds:.2f} s window")
    axes.set_ylabel("score (LLR)" if calibrated else "score (uncalibrated)")
    axes.text(0.01, 0.97, "bona fide", transform=axes.transAxes, va="top", color=BONAFIDE_COLOR, fontsize=9)
    axes.text(0.01, 0.03, "spoof", transform=axes.transAxes, va="bottom", color=SPOOF_COLOR, fontsize=9)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, fontsize=8, frameon=False)
    axes.set_title("Score per window", fontsize=10)
    return figure


def expert_usage_figure(expert_usage: list[list[float]], router_names: list[str]) -> Figure:
    """Heatmap of routers (rows, first layer on top) x experts: the share of windows that were routed there."""
    usage = np.asarray(expert_usage, dtype=float)
    routers, experts = usage.shape
    figure = Figure(figsize=(min(2.5 + 0.55 * experts, 9.0), min(1.4 + 0.32 * routers, 9.0)), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(usage, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    axes.set_xticks(range(experts), [str(e) for e in range(experts)])
    axes.set_yticks(range(routers), router_names, fontsize=8 if routers <= 24 else 6)
    axes.set_xlabel("expert")
    if routers * experts <= 256:
        for (row, column), value in np.ndenumerate(usage):
            if value > 0:
                color = "white" if value > 0.6 else "black"
                axes.text(column, row, f"{value:.0%}", ha="center", va="center", fontsize=7, color=color)
    figure.colorbar(image, ax=axes, label="share of windows", fraction=0.05)
    axes.set_title("Experts that fired, per router", fontsize=10)
    return figure
