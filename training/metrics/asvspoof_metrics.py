"""ASVspoof 5 Track-1 countermeasure metrics: EER, minDCF, actDCF and Cllr, plus per-attack/per-codec breakdowns.

The numbers are meant to be *the* numbers of the official evaluation package (github asvspoof-challenge/asvspoof5,
`evaluation-package/calculate_modules.py`), bit for bit, on any score set. That package has a few quirks that a
"textbook" implementation does not share, and they change results on small or quantised score sets:

* The DET curve has one point per trial, not per distinct score: trials are sorted by score and point k rejects the
  k lowest. Tied scores are not grouped; a bona fide trial sorts *before* a spoof trial with the same score, so ties
  count against the system (a constant-score system gets EER = 1.0, not 0.5).
* EER is the mean of (frr, far) at the first point minimising |frr - far| in floating point: no interpolation, and
  the float rounding of frr/far decides between points that are mathematically equally close.
* minDCF weighs far by Cfa * (1 - (1 - Pspoof)), which is 0.5000000000000004 rather than 0.5 for Pspoof = 0.05,
  while actDCF uses Cfa * Pspoof. We keep the same expressions so both agree to the last bit.
* actDCF thresholds LLR scores at the Bayes decision -log(beta), beta = Cmiss (1 - Pspoof) / (Cfa Pspoof): a bona fide
  trial is missed when score < threshold, a spoof is falsely accepted when score >= threshold.

Convention everywhere: a higher score means more bona fide; labels are 1 = bona fide, 0 = spoof.
"""

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike


# Official Track-1 cost model (evaluation-package/calculate_metrics.py).
P_SPOOF = 0.05
C_MISS = 1.0
C_FA = 10.0

POOLED = "pooled"
METRIC_NAMES = ("eer", "min_dcf", "act_dcf", "cllr")

# Above this, exp() is about to overflow in float64. The official log1p(exp(x)) returns inf there; we return x, which
# is log(1 + e^x) to within float precision. Below it we use the very same expression, so values agree bit for bit.
_SOFTPLUS_LINEAR_FROM = 709.0


def _scores_array(values: ArrayLike, name: str) -> np.ndarray:
    """A 1-D, non-empty, finite float64 copy of `values`, or a ValueError that says what is wrong with `name`."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numbers: {error}") from error
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: every metric needs at least one bona fide and one spoof trial")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name} has {bad.size} non-finite value(s); the first is {name}[{bad[0]}] = {array[bad[0]]}")
    return array


def _check_costs(p_spoof: float, c_miss: float, c_fa: float) -> None:
    if not 0.0 < p_spoof < 1.0:
        raise ValueError(f"p_spoof must be in (0, 1), got {p_spoof}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"c_miss and c_fa must be positive, got c_miss={c_miss}, c_fa={c_fa}")


def compute_det_curve(
    bonafide_scores: ArrayLike, spoof_scores: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frr, far, thresholds) at the N+1 operating points of the official DET curve (N = number of trials).

    Point 0 accepts everything (frr 0, far 1, threshold min - 0.001); point k rejects the k lowest-scored trials and
    its threshold is the k-th lowest score. Ties are ordered bona fide first, as the official stable sort does.
    """
    bonafide = _scores_array(bonafide_scores, "bonafide_scores")
    spoof = _scores_array(spoof_scores, "spoof_scores")
    scores = np.concatenate([bonafide, spoof])
    is_bonafide = np.concatenate([np.ones(bonafide.size, dtype=bool), np.zeros(spoof.size, dtype=bool)])
    order = np.lexsort((~is_bonafide, scores))  # by score, then bona fide before spoof

    bonafide_rejected = np.cumsum(is_bonafide[order])
    spoof_rejected = np.arange(1, scores.size + 1) - bonafide_rejected
    frr = np.concatenate([[0.0], bonafide_rejected / bonafide.size])
    far = np.concatenate([[1.0], (spoof.size - spoof_rejected) / spoof.size])
    thresholds = np.concatenate([[scores[order[0]] - 0.001], scores[order]])
    return frr, far, thresholds


def eer_from_det_curve(frr: np.ndarray, far: np.ndarray, thresholds: np.ndarray) -> tuple[float, float, int]:
    """(EER, threshold, index of the DET point) from `compute_det_curve` output."""
    index = int(np.argmin(np.abs(frr - far)))  # first minimum, like np.argmin in the official code
    return float((frr[index] + far[index]) / 2), float(thresholds[index]), index


def _min_dcf_from_det(
    frr: np.ndarray, far: np.ndarray, thresholds: np.ndarray, p_spoof: float, c_miss: float, c_fa: float
) -> tuple[float, float]:
    p_bonafide = 1 - p_spoof
    # Same association and the same (1 - p_bonafide) as the official loop, so the costs agree bit for bit.
    costs = c_miss * frr * p_bonafide + c_fa * far * (1 - p_bonafide)
    index = int(np.argmin(costs))
    default_cost = min(c_miss * p_bonafide, c_fa * (1 - p_bonafide))
    return float(costs[index] / default_cost), float(thresholds[index])


def compute_eer(bonafide_scores: ArrayLike, spoof_scores: ArrayLike) -> tuple[float, float]:
    """(EER as a fraction, its threshold), picked from the DET points exactly as the official package does."""
    eer, threshold, _ = eer_from_det_curve(*compute_det_curve(bonafide_scores, spoof_scores))
    return eer, threshold


def compute_min_dcf(
    bonafide_scores: ArrayLike,
    spoof_scores: ArrayLike,
    *,
    p_spoof: float = P_SPOOF,
    c_miss: float = C_MISS,
    c_fa: float = C_FA,
) -> tuple[float, float]:
    """(normalised minimum DCF, its threshold): the lowest Cmiss(1-Pspoof)frr + Cfa Pspoof far over the DET points,
    divided by the cost of the best fixed decision, min(Cmiss(1-Pspoof), Cfa Pspoof). Always <= 1."""
    _check_costs(p_spoof, c_miss, c_fa)
    return _min_dcf_from_det(*compute_det_curve(bonafide_scores, spoof_scores), p_spoof, c_miss, c_fa)


def compute_act_dcf(
    bonafide_scores: ArrayLike,
    spoof_scores: ArrayLike,
    *,
    p_spoof: float = P_SPOOF,
    c_miss: float = C_MISS,
    c_fa: float = C_FA,
) -> tuple[float, float]:
    """(normalised actual DCF, its threshold) for scores read as natural-log LLRs (bona fide vs spoof).

    The threshold is the Bayes decision -log(beta) with beta = Cmiss (1 - Pspoof) / (Cfa Pspoof), i.e. -log(1.9) for
    the official costs. Uncalibrated scores (raw logits, probabilities) give meaningless values; it can exceed 1.
    """
    _check_costs(p_spoof, c_miss, c_fa)
    bonafide = _scores_array(bonafide_scores, "bonafide_scores")
    spoof = _scores_array(spoof_scores, "spoof_scores")
    beta = c_miss * (1 - p_spoof) / (c_fa * p_spoof)
    threshold = float(-np.log(beta))  # np.log, not math.log: the two may differ in the last bit
    miss_rate = np.count_nonzero(bonafide < threshold) / bonafide.size
    false_accept_rate = np.count_nonzero(spoof >= threshold) / spoof.size
    cost = c_miss * (1 - p_spoof) * miss_rate + c_fa * p_spoof * false_accept_rate
    return float(cost / min(c_fa * p_spoof, c_miss * (1 - p_spoof))), threshold


def _softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + e^x), computed as the official log1p(exp(x)) but finite for huge x."""
    return np.where(x > _SOFTPLUS_LINEAR_FROM, x, np.log1p(np.exp(np.minimum(x, _SOFTPLUS_LINEAR_FROM))))


def compute_cllr(bonafide_scores: ArrayLike, spoof_scores: ArrayLike) -> float:
    """Log-likelihood-ratio cost in bits for natural-log LLR scores: 0 is perfect, 1 is an uninformative system."""
    bonafide = _scores_array(bonafide_scores, "bonafide_scores")
    spoof = _scores_array(spoof_scores, "spoof_scores")
    return float(0.5 * (np.mean(_softplus(-bonafide)) + np.mean(_softplus(spoof))) / np.log(2))


def split_by_label(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(bona fide scores, spoof scores) after checking that scores and labels describe a usable trial list."""
    score_array = _scores_array(scores, "scores")
    label_array = np.asarray(labels)
    if label_array.ndim != 1 or label_array.shape[0] != score_array.shape[0]:
        raise ValueError(
            f"scores and labels differ in length: {score_array.shape[0]} scores, labels {label_array.shape}"
        )
    if label_array.dtype.kind not in "biuf":
        raise ValueError(f"labels must be 0 (spoof) or 1 (bonafide), got dtype {label_array.dtype}")
    bad = np.flatnonzero((label_array != 0) & (label_array != 1))
    if bad.size:
        raise ValueError(
            f"labels must be 0 (spoof) or 1 (bonafide); {bad.size} are not, the first is labels[{bad[0]}] = {label_array[bad[0]]}"
        )
    is_bonafide = label_array == 1
    if not is_bonafide.any() or is_bonafide.all():
        missing = "bona fide (label 1)" if not is_bonafide.any() else "spoof (label 0)"
        raise ValueError(
            f"need at least one trial of each class; there is no {missing} trial among {label_array.size}"
        )
    return score_array[is_bonafide], score_array[~is_bonafide]


def compute_metrics(
    scores: ArrayLike, labels: ArrayLike, *, p_spoof: float = P_SPOOF, c_miss: float = C_MISS, c_fa: float = C_FA
) -> dict[str, float]:
    """The four official Track-1 numbers: {"eer" (fraction), "min_dcf", "act_dcf", "cllr" (bits)}."""
    _check_costs(p_spoof, c_miss, c_fa)
    bonafide, spoof = split_by_label(scores, labels)
    frr, far, thresholds = compute_det_curve(bonafide, spoof)
    eer, _, _ = eer_from_det_curve(frr, far, thresholds)
    min_dcf, _ = _min_dcf_from_det(frr, far, thresholds, p_spoof, c_miss, c_fa)
    act_dcf, _ = compute_act_dcf(bonafide, spoof, p_spoof=p_spoof, c_miss=c_miss, c_fa=c_fa)
    return {"eer": eer, "min_dcf": min_dcf, "act_dcf": act_dcf, "cllr": compute_cllr(bonafide, spoof)}


def _conditions_array(values: ArrayLike, name: str, length: int) -> np.ndarray:
    array = np.asarray([str(value) for value in values], dtype=object)
    if array.shape != (length,):
        raise ValueError(f"{name} must have one entry per score ({length}), got {array.shape[0]}")
    return array


def breakdown(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    attacks: Sequence | None = None,
    codecs: Sequence | None = None,
    p_spoof: float = P_SPOOF,
    c_miss: float = C_MISS,
    c_fa: float = C_FA,
) -> list[dict]:
    """Metrics per attack and/or per codec, as in the official full evaluation (calculate_metrics_full.py).

    A cell (attack a, codec c) scores the bona fide trials of codec c against the spoof trials of attack a in codec c;
    "pooled" stands for all attacks / all codecs, so the per-attack rows compare each attack against *all* bona fide.
    Attack values of bona fide trials are ignored. Rows come attack-major, pooled first, then names sorted; a row
    has the keys "attack" and/or "codec" (those asked for), "n_bonafide", "n_spoof" and the four metrics, which are
    None when the cell has no bona fide or no spoof trial.
    """
    score_array = _scores_array(scores, "scores")
    split_by_label(score_array, labels)  # validates labels
    is_bonafide = np.asarray(labels) == 1
    everything = np.ones(score_array.size, dtype=bool)

    def condition_masks(values: Sequence | None, name: str, among: np.ndarray) -> list[tuple[str, np.ndarray]]:
        if values is None:
            return [(POOLED, everything)]
        array = _conditions_array(values, name, score_array.size)
        names = sorted(set(array[among]))
        if POOLED in names:
            raise ValueError(f"{name} uses the reserved name {POOLED!r}")
        return [(POOLED, everything)] + [(value, array == value) for value in names]

    rows = []
    for attack, in_attack in condition_masks(attacks, "attacks", ~is_bonafide):
        for codec, in_codec in condition_masks(codecs, "codecs", everything):
            row = {"attack": attack} if attacks is not None else {}
            if codecs is not None:
                row["codec"] = codec
            bonafide = score_array[is_bonafide & in_codec]
            spoof = score_array[~is_bonafide & in_codec & in_attack]
            row.update(n_bonafide=int(bonafide.size), n_spoof=int(spoof.size))
            if bonafide.size and spoof.size:
                both = np.concatenate([bonafide, spoof])
                both_labels = np.concatenate([np.ones(bonafide.size, int), np.zeros(spoof.size, int)])
                row.update(compute_metrics(both, both_labels, p_spoof=p_spoof, c_miss=c_miss, c_fa=c_fa))
            else:
                row.update(dict.fromkeys(METRIC_NAMES))
            rows.append(row)
    return rows


def breakdown_by_attack(scores: ArrayLike, labels: ArrayLike, attacks: Sequence, **costs: float) -> list[dict]:
    """One row per attack (its spoofs vs all bona fide, the ASVspoof convention) after a pooled row."""
    return breakdown(scores, labels, attacks=attacks, **costs)


def breakdown_by_codec(scores: ArrayLike, labels: ArrayLike, codecs: Sequence, **costs: float) -> list[dict]:
    """One row per codec (bona fide and spoof of that codec) after a pooled row."""
    return breakdown(scores, labels, codecs=codecs, **costs)


def _format_metric(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.3f}" if name == "eer" else f"{value:.5f}"


_HEADERS = {"eer": "EER (%)", "min_dcf": "minDCF", "act_dcf": "actDCF", "cllr": "Cllr (bits)"}


def format_table(rows: Sequence[dict]) -> str:
    """A markdown table of breakdown rows (EER in percent, as the official package prints it)."""
    if not rows:
        raise ValueError("format_table got no rows")
    keys = [key for key in ("attack", "codec") if key in rows[0]]
    header = keys + ["n_bonafide", "n_spoof"] + [_HEADERS[name] for name in METRIC_NAMES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row[key]) for key in keys] + [str(row["n_bonafide"]), str(row["n_spoof"])]
        cells += [_format_metric(name, row[name]) for name in METRIC_NAMES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_grid(rows: Sequence[dict], metric: str = "eer") -> str:
    """A markdown attack x codec table of one metric, from `breakdown(..., attacks=..., codecs=...)` rows."""
    if metric not in METRIC_NAMES:
        raise ValueError(f"metric must be one of {METRIC_NAMES}, got {metric!r}")
    if not rows or "attack" not in rows[0] or "codec" not in rows[0]:
        raise ValueError("format_grid needs rows from breakdown() with both attacks and codecs")
    codecs = list(dict.fromkeys(row["codec"] for row in rows))
    cells = {(row["attack"], row["codec"]): row[metric] for row in rows}
    lines = [f"| {_HEADERS[metric]} | " + " | ".join(codecs) + " |", "|" + "---|" * (len(codecs) + 1)]
    for attack in dict.fromkeys(row["attack"] for row in rows):
        values = [_format_metric(metric, cells.get((attack, codec))) for codec in codecs]
        lines.append(f"| {attack} | " + " | ".join(values) + " |")
    return "\n".join(lines)
