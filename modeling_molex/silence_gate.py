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


__all__ = ["FRAME_SECONDS", "MIN_ACTIVE_SECONDS", "ActiveFrames", "active_seconds"]

FRAME_SECONDS = 0.02  # 20 ms: the usual analysis frame of speech; a click fills one or two
MIN_ACTIVE_SECONDS = 0.1  # five frames: the shortest stretch of sound the scoring path judges (as MIN_SECONDS)
_CHUNK_FRAMES = 4096  # frames converted to float64 at a time (bounded memory on long clips)


def active_seconds(wave: np.ndarray, rate: int, threshold_dbfs: float) -> float:
    """Seconds of `wave` ((samples,) at `rate` Hz) in frames whose RMS, each frame's mean removed, is at least
    `threshold_dbfs` (-inf: every frame counts). A last partial frame counts for its own length."""
    frames = ActiveFrames(1, rate, threshold_dbfs)
    frames.add(wave[None, :])
    return float(frames.seconds()[0])


class ActiveFrames:
    """`active_seconds` of K signals fed chunk by chunk (any lengths): frames run from each signal's first sample,
    and a frame split between chunks is completed from the next one, so a stream counts what the whole clip
    counts. Holds less than one frame of each signal."""

    def __init__(self, signals: int, rate: int, threshold_dbfs: float):
        self.rate = int(rate)
        self.frame = max(1, round(FRAME_SECONDS * rate))
        self.threshold = 10.0 ** (threshold_dbfs / 10.0) if math.isfinite(threshold_dbfs) else 0.0  # mean square
        self.active = np.zeros(signals, dtype=np.int64)  # samples in active full frames
        self._rest = np.zeros((signals, 0), dtype=np.float64)  # the incomplete last frame

    def add(self, samples: np.ndarray) -> None:
        """Count the frames that (K, n) `samples` complete."""
        start = 0
        if self._rest.shape[1]:
            start = min(samples.shape[1], self.frame - self._rest.shape[1])
            self._rest = np.concatenate([self._rest, samples[:, :start].astype(np.float64)], axis=1)
            if self._rest.shape[1] < self.frame:
                return
            self.active += self.frame * (self._rest.var(axis=1) >= self.threshold)
        body = samples[:, start:]
        full = body.shape[1] // self.frame
        for first in range(0, full, _CHUNK_FRAMES):
            last = min(full, first + _CHUNK_FRAMES)
            frames = body[:, first * self.frame : last * self.frame].astype(np.float64)
            frames = frames.reshape(len(body), last - first, self.frame)
            self.active += self.frame * np.count_nonzero(frames.var(axis=2) >= self.threshold, axis=1)
        self._rest = body[:, full * self.frame :].astype(np.float64)

    def seconds(self) -> np.ndarray:
        """(K,) active seconds so far, the incomplete last frame counted for its own length when active."""
        rest = self._rest.shape[1]
        partial = rest * (self._rest.var(axis=1) >= self.threshold) if rest else np.zeros_like(self.active)
        return (self.active + partial) / self.rate
