"""What a stream keeps: its two growing things, each bounded or compact, and the per-window result type (shipped as
remote code; numpy, and torch for the usage tensor).

- `WindowBuffer`: the newest samples of every candidate signal at the model's rate, never more than two windows'
  worth, so that a stream of any length holds one window (plus the piece being added) of audio.
- `WindowScore`: one window's result as `push` returns it.
- `Timeline`: the per-window results `finish()` returns (start, score and expert usage per candidate), in arrays that
  double when full: 8 + 8 * K + 4 * K * routers * experts bytes per window for K candidates, and no audio.
"""

from dataclasses import dataclass

import numpy as np
import torch


__all__ = ["Timeline", "WindowBuffer", "WindowScore"]


@dataclass(frozen=True)
class WindowScore:
    """One window of a stream, as `push` returns it once the window's last sample is in. Higher = more bona fide.

    Args:
        index: the window's place in the stream (0, 1, ...), its row in `finish().window_scores`.
        start, end: seconds from the stream's start (at the model's rate, as `WaveformScore.window_starts`).
        score: the window's score (an LLR when the model is calibrated and `calibrate=True`).
        verdict: "bonafide" (score >= 0) or "spoof"; None while the stream so far is near-silent.
        expert_usage: (routers, experts) share of the window's routing decisions per expert (the experts that fired).
        silent: the stream so far is below the silence threshold.
        running_score, running_verdict: the mean of the stream's windows so far and its verdict (None when silent).
        channel_policy: how the channels became one, as decided so far ("mono", "mean of 2 channels", ...).
    """

    index: int
    start: float
    end: float
    score: float
    verdict: str | None
    expert_usage: torch.Tensor
    silent: bool
    running_score: float
    running_verdict: str | None
    channel_policy: str

    def to_dict(self) -> dict:
        """Plain JSON-ready values."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__} | {
            "expert_usage": self.expert_usage.tolist()
        }


class WindowBuffer:
    """The last samples of K candidate signals, (K, 2 * window) float64, and the stream position of its first one.

    `add` takes any number of samples and returns every window (start, (K, window) copy) that became complete,
    starting at 0 and every `hop` samples: the regular windows of the offline path. What is kept between calls is at
    most the last `window` samples: every later regular window, and the last window ending at the stream's end, lie
    within them."""

    def __init__(self, candidates: int, window: int, hop: int):
        self.window, self.hop = window, hop
        self.samples = np.zeros((candidates, 2 * window), dtype=np.float64)
        self.origin = 0  # stream position (model-rate samples) of samples[:, 0]
        self.filled = 0
        self.next_start = 0  # start of the next regular window
        self.peaks = np.zeros(candidates, dtype=np.float64)  # running max |x| of each candidate

    @property
    def total(self) -> int:
        """Samples added so far (at the model's rate)."""
        return self.origin + self.filled

    def add(self, samples: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """(K, n) float64 samples -> the windows they completed, oldest first."""
        completed = []
        for offset in range(0, samples.shape[1], self.window):
            part = samples[:, offset : offset + self.window]
            if self.filled + part.shape[1] > self.samples.shape[1]:
                kept = min(self.filled, self.window)
                self.samples[:, :kept] = self.samples[:, self.filled - kept : self.filled]
                self.origin += self.filled - kept
                self.filled = kept
            self.samples[:, self.filled : self.filled + part.shape[1]] = part
            self.filled += part.shape[1]
            if part.size:
                np.maximum(self.peaks, np.abs(part).max(axis=1), out=self.peaks)
            while self.next_start + self.window <= self.total:
                completed.append((self.next_start, self.last(self.total - self.next_start)[:, : self.window].copy()))
                self.next_start += self.hop
        return completed

    def last(self, count: int) -> np.ndarray:
        """View of the newest `count` samples (count <= what is held), (K, count)."""
        if count > self.filled:
            raise ValueError(f"the buffer holds {self.filled} samples, {count} were asked for")
        return self.samples[:, self.filled - count : self.filled]


class Timeline:
    """Per-window results in arrays that double when full: starts (W,), scores (W, K) float64 (calibrated), usage
    (W, K, routers, experts) float32."""

    def __init__(self, candidates: int, routers: int, experts: int):
        self.count = 0
        self.starts = np.zeros(16, dtype=np.int64)
        self.scores = np.zeros((16, candidates), dtype=np.float64)
        self.usage = np.zeros((16, candidates, routers, experts), dtype=np.float32)
        self.score_sums = np.zeros(candidates, dtype=np.float64)  # for the running clip score of each candidate

    def append(self, starts: list[int], scores: np.ndarray, usage: np.ndarray) -> None:
        """W new windows: starts (W,), scores (W, K), usage (W, K, routers, experts)."""
        needed = self.count + len(starts)
        if needed > len(self.starts):
            capacity = max(needed, 2 * len(self.starts))
            self.starts = _grown(self.starts, capacity)
            self.scores = _grown(self.scores, capacity)
            self.usage = _grown(self.usage, capacity)
        self.starts[self.count : needed] = starts
        self.scores[self.count : needed] = scores
        self.usage[self.count : needed] = usage
        self.score_sums += scores.sum(axis=0)
        self.count = needed

    def nbytes(self) -> int:
        """Bytes held by the arrays (capacity, not just the windows so far)."""
        return self.starts.nbytes + self.scores.nbytes + self.usage.nbytes


def _grown(array: np.ndarray, capacity: int) -> np.ndarray:
    grown = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    grown[: len(array)] = array
    return grown
