"""Is there anything to judge? The near-silence gate of the scoring path, on the AC part of the signal.

The gate used to compare the clip's RMS with `silence_dbfs`. RMS counts DC, so a constant offset of 0.5 (a
faulty interface, an unsigned file read as signed) measured -6 dBFS and got a verdict, and so did a single click in
four seconds of silence (its energy spread over the clip is about -48 dBFS). Neither holds speech.

So the clip is cut into frames of `FRAME_SECONDS`; each frame's own mean is removed (DC, and drift slower than the
frame), and a frame is *active* when its RMS reaches `silence_dbfs`. A clip with less than `MIN_ACTIVE_SECONDS` of
active frames is near-silent: no score, no verdict. A click or a step fills one or two frames, a DC offset none.
Shipped as remote code.
"""

import math

import numpy as np


__all__ = ["FRAME_SECONDS", "MIN_ACTIVE_SECONDS", "active_seconds"]

FRAME_SECONDS = 0.02  # 20 ms: the usual analysis frame of speech; a click fills one or two
MIN_ACTIVE_SECONDS = 0.1  # five frames: the shortest stretch of sound the scoring path judges (as MIN_SECONDS)
_CHUNK_FRAMES = 4096  # frames converted to float64 at a time (bounded memory on long clips)


def active_seconds(wave: np.ndarray, rate: int, threshold_dbfs: float) -> float:
    """Seconds of `wave` ((samples,) at `rate` Hz) in frames whose RMS, each frame's mean removed, is at least
    `threshold_dbfs` (-inf: every frame counts). A last partial frame counts for its own length."""
    frame = max(1, round(FRAME_SECONDS * rate))
    threshold = 10.0 ** (threshold_dbfs / 10.0) if math.isfinite(threshold_dbfs) else 0.0  # on the mean square
    active = 0
    full = wave.shape[0] // frame
    for first in range(0, full, _CHUNK_FRAMES):
        last = min(full, first + _CHUNK_FRAMES)
        frames = wave[first * frame : last * frame].astype(np.float64).reshape(last - first, frame)
        active += frame * int(np.count_nonzero(frames.var(axis=1) >= threshold))
    rest = wave[full * frame :].astype(np.float64)
    if rest.size and rest.var() >= threshold:
        active += rest.size
    return active / rate
