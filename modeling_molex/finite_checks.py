"""Numbers checked before they are used: config fields, scoring options, weights and scores. Shipped as remote code.

A NaN compares False with everything, so `if value <= 0: raise` lets it through, and a NaN score then becomes the
verdict "spoof" (NaN >= 0 is False). Every check here is written so that NaN and the infinities fail it, and every
error names the field, tensor or clip it is about.
"""

import math

import torch


__all__ = [
    "MAX_CROP_SECONDS",
    "MAX_SAMPLING_RATE",
    "MIN_SAMPLING_RATE",
    "NonFiniteScoreError",
    "check_finite_tensors",
    "check_window_scores",
    "finite_number",
    "int_in_range",
]

MIN_SAMPLING_RATE = 8_000  # Hz: telephone speech; below it the speech band (up to 4 kHz) is gone
MAX_SAMPLING_RATE = 192_000  # Hz: the highest rate of studio audio; a model trained above it is a mistake
MAX_CROP_SECONDS = 60.0  # one training window; the scoring path holds batch_size of them (float32) at once


class NonFiniteScoreError(ValueError):
    """A score that is NaN or infinite: no verdict can be given. The message names the clip and the step."""


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def finite_number(
    field: str,
    value,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """`value` as a float when it is a finite number in the range (open or closed ends); else a ValueError naming
    `field` and the range."""
    inside = _is_number(value) and math.isfinite(value)
    if inside:
        inside = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not inside:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"`{field}` must be a finite number in {left}{low:g}, {high:g}{right}, got {value!r}")
    return float(value)


def int_in_range(field: str, value, low: int, high: int | None = None) -> int:
    """`value` when it is an int in [low, high] (high None: no upper end); else a ValueError naming `field`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        upper = "" if high is None else f", {high:,}"
        kind = f"an int in [{low:,}{upper}]" if high is not None else f"an int >= {low:,}"
        raise ValueError(f"`{field}` must be {kind}, got {value!r}")
    return value


def check_finite_tensors(named_tensors, source: str) -> None:
    """Refuse the first floating tensor holding NaN or an infinity, naming it and `source` (the file or folder)."""
    for name, tensor in named_tensors:
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"{source}: weight {name!r} holds {bad} NaN or infinite value(s) of {tensor.numel()}; "
                "refusing to load a model whose scores would not be numbers"
            )


def check_window_scores(raw: torch.Tensor, scores: torch.Tensor, owners: list[tuple[str, int]], calibration) -> None:
    """Every window's raw score and calibrated score must be finite before any verdict.

    `owners[j]` is (clip name, window index) of window j. Raises `NonFiniteScoreError` naming the clip, the window
    and the step that produced the value: the model's output, or the calibration."""
    for values, step in ((raw, "raw"), (scores, "calibrated")):
        finite = torch.isfinite(values)
        if bool(finite.all()):
            continue
        first = int((~finite).nonzero()[0, 0])
        name, window = owners[first]
        value = float(values[first])
        if step == "raw":
            raise NonFiniteScoreError(
                f"{name}: the model's output (logit[bonafide] - logit[spoof]) is not finite ({value}) in window "
                f"{window}: a weight of the model, or a value inside it, overflowed; no verdict"
            )
        raise NonFiniteScoreError(
            f"{name}: the calibrated score (scale * raw + bias) is not finite ({value}) in window {window} (raw "
            f"score {float(raw[first]):.6g}, config.calibration {calibration}); no verdict"
        )
