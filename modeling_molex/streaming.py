"""Live scoring: push audio as it arrives, get each window's verdict as soon as its last sample is in, and at the end
the offline result. Shipped as remote code (numpy and torch; soxr, under `try` in audio_io, for other rates).

    stream = model.streaming_scorer(16_000)       # the options of score_waveform: hop_samples, calibrate, ...
    for chunk in microphone:                      # any lengths (0 and 1 sample too), (samples,) or (channels, samples)
        for window in stream.push(chunk):         # the windows this chunk completed
            print(window.start, window.score, window.verdict, window.running_verdict)
    result = stream.finish()                      # a WaveformScore: model.score_waveform(whole_clip, 16_000)

How the stream makes the decisions the offline path (scoring.py) takes from the whole clip:
- windows: the regular windows (every hop from 0) are scored as soon as they are complete; `finish()` adds what
  the offline path has at the end and nothing else: the last window ending at the clip end (unless the clip ends on
  a hop), or, for a stream shorter than one window, its audio repeated up to one window (`scoring.window_starts`
  decides, for the final length). At the model's rate `finish()` equals `score_waveform` to float precision
  (tested to 1e-5 for any chunking: score, window starts and scores, usage, novelty).
- channels: the offline path averages the channels unless that cancels them, then takes the loudest one
  (`audio_io.channel_choice` on whole-clip RMS levels). A stream of C > 1 channels scores every candidate (the mean
  and each channel) of every window, in one forward pass (C + 1 windows' compute; mono costs one); a window's
  reported score and verdict follow the rule applied to the RMS levels of all audio pushed so far, and `finish()`
  applies it to the whole stream's levels and returns that candidate's windows, as the offline path would.
- silence: the offline path gives a clip with less than 0.1 s of active 20 ms frames (frames whose level, DC removed,
  reaches `silence_dbfs`; silence_gate.py) no score and no verdict. The stream counts the same frames of each
  candidate as they arrive (`silence_gate.ActiveFrames`, a frame split between chunks completed by the next). A
  window's `verdict` (and `running_verdict`) is None while the stream so far is that quiet; its score is still
  computed, since the stream may get louder; `finish()` decides from the whole stream's frames. The reported
  `level_dbfs` is the level of the AC part (the stream's mean removed), as offline, from running means and sums
  of squared deviations combined chunk by chunk (exact for a DC offset too).
- loudness: the offline path divides a clip whose peak exceeds 1e6 by that peak (normalisation is scale-free up to
  its epsilon); a stream divides each window by the running peak of its candidate when the window is scored. For
  audio within +-1e6 (all real audio) nothing is divided and the results are identical.
- rate: other rates are resampled as they arrive by one multi-channel `soxr.ResampleStream` (HQ, as the offline
  `soxr.resample`); its filter delay (a few ms) holds the newest samples back until `finish()` flushes them.
  Measured against offline at 8, 22.05, 44.1 and 48 kHz: identical to float precision (see tests/test_streaming.py).
- duration and the 0.1 s minimum come from the number of input samples, as offline.

Memory: one window of each candidate (float64, in `WindowBuffer`), at most `batch_size` pending windows, running
sums, and the per-window results `finish()` returns (`Timeline`: about 140 bytes a window for a mono stream of the
main model: 0.5 MB an hour); never the audio. A 1-hour stream holds what a 1-minute one holds, plus that timeline.

Threads: all state lives on the stream; a lock serialises calls on one stream, and streams on one model run in
parallel (the model keeps no state between forwards).

Errors (`AudioInputError`, a ValueError, naming the stream's chunk, counted from 1): a chunk that is not float or
integer samples, of another shape than (samples,) or (channels, samples), with another channel count than the
stream's first chunk, with NaN or infinite samples, or that overflows when its channels are averaged, is refused
whole and nothing of it is used: the stream goes on with the next chunk. A push after `finish()` raises
ValueError. `finish()` on less than 0.1 s of audio raises and leaves the stream open for more.
"""

import threading
from dataclasses import dataclass

import numpy as np
import torch

from .audio_io import (
    MAX_CHANNELS,
    AudioInputError,
    as_float_samples,
    centred_sums,
    channel_choice,
    refuse_non_finite,
    rms_dbfs,
    soxr,
    sum_of_squares,
)
from .finite_checks import check_window_scores, finite_number, int_in_range
from .outputs import calibrate_scores
from .scoring import (
    MAX_PLAIN_PEAK,
    MIN_SECONDS,
    SILENCE_DBFS,
    WaveformScore,
    check_sampling_rate,
    clip_result,
    load_model_signatures,
    overflow_error,
    score_window_batch,
    verdict,
    window_starts,
)
from .silence_gate import MIN_ACTIVE_SECONDS, ActiveFrames
from .stream_buffers import Timeline, WindowBuffer, WindowScore


__all__ = ["StreamingScorer", "WindowScore"]


@dataclass(frozen=True)
class _Decision:
    """The whole-clip decisions, from the running sums of the audio pushed so far."""

    candidate: int  # 0: the mean (or the only channel), i + 1: channel i
    channel_policy: str
    level: float
    silent: bool


class StreamingScorer:
    """Scores a stream window by window; see the module docstring. Built by `model.streaming_scorer(rate, ...)`.

    Args:
        model: a MoLExForAudioClassification (in eval mode), shared freely with other streams and threads.
        sampling_rate: the rate (Hz) of every chunk.
        hop_samples, batch_size, calibrate, flag_silence, silence_dbfs, signatures: as in `scoring.score_waveforms`
            (`batch_size` bounds the windows of one forward pass, and so the memory of a huge chunk).
        name: how errors name the stream.
    """

    def __init__(
        self,
        model,
        sampling_rate: int,
        *,
        hop_samples: int | None = None,
        batch_size: int = 8,
        calibrate: bool = True,
        flag_silence: bool = True,
        silence_dbfs: float = SILENCE_DBFS,
        signatures="auto",
        name: str = "stream",
    ):
        config = model.config
        self.name = name
        self.sampling_rate = check_sampling_rate(sampling_rate, name)
        self.window, self.model_rate = int(config.crop_samples), int(config.sampling_rate)
        int_in_range("batch_size", batch_size, 1)
        self.hop = max(1, self.window // 2) if hop_samples is None else int_in_range("hop_samples", hop_samples, 1)
        silence_dbfs = finite_number("silence_dbfs", silence_dbfs, -200.0, 0.0)
        if self.sampling_rate != self.model_rate and soxr is None:
            raise AudioInputError(
                f"{name}: resampling {self.sampling_rate} Hz to the model's {self.model_rate} Hz needs the `soxr` "
                f"package (pip install soxr), or stream audio already at {self.model_rate} Hz"
            )
        self._model = model
        self._batch_size = batch_size
        self._calibration = config.calibration if calibrate else None
        self._flag_silence, self._silence_dbfs = flag_silence, silence_dbfs
        self._signatures = load_model_signatures(model) if signatures == "auto" else signatures
        self._lock = threading.Lock()
        self._chunks = 0  # push calls so far, refused ones included (errors name the chunk)
        self._input_samples = 0
        self._channels: int | None = None  # set by the first non-empty chunk
        self._sums: np.ndarray | None = None  # (K,) float64 sum of squares of each candidate at the input rate
        self._means: np.ndarray | None = None  # (K,) float64 mean of each candidate so far
        self._deviations: np.ndarray | None = None  # (K,) float64 sum of squared deviations from that mean
        self._frames: ActiveFrames | None = None  # the silence gate's active 20 ms frames of each candidate
        self._buffer: WindowBuffer | None = None
        self._timeline: Timeline | None = None
        self._resampler = None
        self._pending: list[tuple[int, np.ndarray]] = []
        self._failure: str | None = None
        self._result: WaveformScore | None = None

    # ----- what callers see ------------------------------------------------------------------------------------

    @property
    def duration(self) -> float:
        """Seconds of audio pushed so far."""
        return self._input_samples / self.sampling_rate

    @property
    def finished(self) -> bool:
        return self._result is not None

    def push(self, chunk) -> list[WindowScore]:
        """Take the next samples ((samples,) or (channels, samples), float or integer PCM, numpy, torch or a list;
        any length) -> the windows this chunk completed, oldest first (often none). A refused chunk raises
        `AudioInputError` and leaves the stream as it was."""
        with self._lock:
            self._check_open()
            self._chunks += 1
            candidates = self._accept(chunk, f"{self.name} chunk {self._chunks}")
            if candidates is None:
                return []
            self._sums += sum_of_squares(candidates)
            self._add_centred_sums(candidates)
            self._frames.add(candidates)
            self._input_samples += candidates.shape[1]
            decision = self._decision()
            windows: list[WindowScore] = []
            for offset in range(0, candidates.shape[1], self.window):
                piece = candidates[:, offset : offset + self.window].astype(np.float64)
                self._add(self._resampled(piece), decision, windows)
            self._score_pending(decision, windows)
            return windows

    def finish(self) -> WaveformScore:
        """The remaining window(s) and the clip's result: what `model.score_waveform(whole_clip, rate, **options)`
        returns. Called again, it returns the same result. Raises `AudioInputError` (and stays open for more
        audio) when less than 0.1 s was pushed."""
        with self._lock:
            if self._result is not None:
                return self._result
            self._check_open()
            duration = self._input_samples / self.sampling_rate
            if duration < MIN_SECONDS:
                raise AudioInputError(
                    f"{self.name} is {duration:.3f} s long; at least {MIN_SECONDS} s of audio is needed"
                )
            decision = self._decision()
            if self._resampler is not None:
                flushed = self._resampler.resample_chunk(np.zeros((0, len(self._sums))), last=True)
                self._add(self._checked_finite(np.ascontiguousarray(flushed.T)), decision, [])
            self._score_pending(decision, [])
            self._result = self._clip_result(decision)
            self._buffer = self._timeline = self._resampler = None  # nothing more is needed
            return self._result

    # ----- chunks in ---------------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._result is not None:
            raise ValueError(f"{self.name} is finished: push() after finish() is refused; start a new stream")
        if self._failure is not None:
            raise AudioInputError(f"{self.name} cannot go on: {self._failure}")

    def _accept(self, chunk, label: str) -> np.ndarray | None:
        """The chunk's candidate signals (K, n) (mean first, then each channel; or the one channel), or None for a
        chunk without samples. Everything that can be wrong with it is checked here, before anything is used."""
        try:
            samples = as_float_samples(chunk, label)
        except AudioInputError:
            raise
        except (TypeError, ValueError) as error:  # e.g. a ragged list
            raise AudioInputError(f"{label}: not an array of audio samples ({error})") from None
        if samples.ndim == 1:
            samples = samples[None, :]
        elif samples.ndim != 2:
            raise AudioInputError(f"{label}: expected shape (samples,) or (channels, samples), got {samples.shape}")
        elif samples.shape[0] > MAX_CHANNELS:
            raise AudioInputError(
                f"{label}: a 2-D chunk must be (channels, samples) with at most {MAX_CHANNELS} channels, got shape "
                f"{samples.shape} (for (samples, channels) audio push chunk.T)"
            )
        channels = samples.shape[0]
        if self._channels is not None and channels != self._channels:
            raise AudioInputError(
                f"{label} has {channels} channel(s) but the stream has {self._channels} (set by its first chunk)"
            )
        if samples.shape[1] == 0:
            return None
        refuse_non_finite(samples, label)
        candidates = samples
        if channels > 1:
            with np.errstate(over="ignore"):  # refused just below
                mean = samples.mean(axis=0)  # in the samples' own precision, as audio_io.to_mono
            if not np.isfinite(mean).all():
                raise overflow_error(label)
            candidates = np.concatenate([mean[None, :], samples])
        if self._channels is None:
            self._start(channels, len(candidates))
        return candidates

    def _start(self, channels: int, candidates: int) -> None:
        self._channels = channels
        self._sums = np.zeros(candidates, dtype=np.float64)
        self._means = np.zeros(candidates, dtype=np.float64)
        self._deviations = np.zeros(candidates, dtype=np.float64)
        self._frames = ActiveFrames(candidates, self.sampling_rate, self._silence_dbfs)
        self._buffer = WindowBuffer(candidates, self.window, self.hop)
        routers, experts = len(self._model.router_names), int(self._model.config.adapter.num_experts)
        self._timeline = Timeline(candidates, routers, experts)
        if self.sampling_rate != self.model_rate:
            self._resampler = soxr.ResampleStream(
                self.sampling_rate, self.model_rate, candidates, dtype="float64", quality="HQ"
            )

    def _add_centred_sums(self, candidates: np.ndarray) -> None:
        """Combine the chunk's means and sums of squared deviations with the stream's (Chan et al.'s pairwise
        update): the level of the AC part without a one-pass sum of squares minus squared mean, which cancels."""
        chunk_means, chunk_deviations = centred_sums(candidates)
        before, added = self._input_samples, candidates.shape[1]
        total = before + added
        delta = chunk_means - self._means
        self._deviations += chunk_deviations + delta * delta * (before * added / total)
        self._means += delta * (added / total)

    def _resampled(self, piece: np.ndarray) -> np.ndarray:
        """(K, n) float64 at the input rate -> (K, m) at the model's rate (m lags n by the resampler's delay)."""
        if self._resampler is None:
            return piece
        out = self._resampler.resample_chunk(np.ascontiguousarray(piece.T))
        return self._checked_finite(np.ascontiguousarray(out.T))

    def _checked_finite(self, samples: np.ndarray) -> np.ndarray:
        if not np.isfinite(samples).all():  # samples near float64's limit: the resampler's state is spoilt
            self._failure = str(overflow_error(f"chunk {self._chunks}"))
            raise AudioInputError(f"{self.name}: {self._failure}")
        return samples

    def _decision(self) -> _Decision:
        rms = np.sqrt(self._sums / self._input_samples)
        if self._channels == 1:
            candidate, policy = 0, "mono"
        else:
            loudest, policy = channel_choice(float(rms[0]), rms[1:])
            candidate = 0 if loudest is None else loudest + 1
        level = rms_dbfs(float(np.sqrt(self._deviations[candidate] / self._input_samples)))
        quiet = self._frames.seconds()[candidate] < MIN_ACTIVE_SECONDS
        return _Decision(candidate, policy, level, bool(self._flag_silence and quiet))

    # ----- windows out -------------------------------------------------------------------------------------------

    def _add(self, samples: np.ndarray, decision: _Decision, windows: list[WindowScore]) -> None:
        for start, window in self._buffer.add(samples):
            self._pending.append((start, window))
            if len(self._pending) * len(self._sums) >= self._batch_size:
                self._score_pending(decision, windows)

    def _score_pending(self, decision: _Decision, windows: list[WindowScore]) -> None:
        """Score the pending regular windows (every candidate), record them, and report them under `decision`."""
        if not self._pending:
            return
        starts = [start for start, _ in self._pending]
        rows = np.concatenate([window for _, window in self._pending])  # (W * K, window), window-major
        count, first = len(self._sums), self._timeline.count
        scores, usage = self._score_rows(rows, np.tile(np.arange(count), len(starts)), first)
        self._pending = []
        scores = scores.reshape(len(starts), count)
        usage = usage.reshape(len(starts), count, *usage.shape[1:])
        self._timeline.append(starts, scores, usage)
        running = self._timeline.score_sums[decision.candidate] / self._timeline.count
        for offset, start in enumerate(starts):
            score = float(scores[offset, decision.candidate])
            windows.append(
                WindowScore(
                    index=first + offset,
                    start=start / self.model_rate,
                    end=(start + self.window) / self.model_rate,
                    score=score,
                    verdict=None if decision.silent else verdict(score),
                    expert_usage=torch.from_numpy(usage[offset, decision.candidate].copy()),
                    silent=decision.silent,
                    running_score=float(running),
                    running_verdict=None if decision.silent else verdict(float(running)),
                    channel_policy=decision.channel_policy,
                )
            )

    def _score_rows(self, rows: np.ndarray, candidates: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray]:
        """(N, window) float64 rows, each of the given candidate, window-major from window `first` -> calibrated
        scores (N,) float64 and usage (N, R, E) float32, in forward passes of at most `batch_size` rows. A NaN or
        infinite score is a `NonFiniteScoreError` naming the stream and the window, as offline."""
        peaks = self._buffer.peaks[candidates][:, None]
        rows = np.where(peaks > MAX_PLAIN_PEAK, rows / np.maximum(peaks, 1.0), rows)
        rows = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
        raw_scores, usages = [], []
        for first in range(0, len(rows), self._batch_size):
            raw, usage = score_window_batch(self._model, rows[first : first + self._batch_size])
            raw_scores.append(raw)
            usages.append(usage)
        raw = torch.cat(raw_scores)
        scores = calibrate_scores(raw, self._calibration)
        owners = [(self.name, first + row // len(self._sums)) for row in range(len(rows))]
        check_window_scores(raw, scores, owners, self._calibration)
        return scores.numpy(), torch.cat(usages).numpy()

    def _clip_result(self, decision: _Decision) -> WaveformScore:
        """The offline path's windows for the final length: the regular ones scored so far, plus its tail."""
        total, timeline, candidate = self._buffer.total, self._timeline, decision.candidate
        starts = window_starts(total, self.window, self.hop)
        scored = timeline.starts[: timeline.count].tolist()
        if starts[: len(scored)] != scored or len(starts) - len(scored) > 1:
            raise RuntimeError(
                f"{self.name}: windows {scored[:4]}... disagree with the offline path's {starts[:4]}..."
            )
        scores = timeline.scores[: timeline.count, candidate]
        usage = timeline.usage[: timeline.count, candidate]
        if len(starts) > len(scored) and not decision.silent:
            if total < self.window:  # a short stream: repeated up to one window, as offline
                tail = np.resize(self._buffer.last(total)[candidate], self.window)[None, :]
            else:
                tail = self._buffer.last(self.window)[candidate : candidate + 1]
            tail_score, tail_usage = self._score_rows(tail, np.array([candidate]), len(scored))
            scores, usage = np.concatenate([scores, tail_score]), np.concatenate([usage, tail_usage])
        return clip_result(
            self._model,
            torch.from_numpy(np.ascontiguousarray(scores)),
            torch.from_numpy(np.ascontiguousarray(usage)),
            starts,
            silent=decision.silent,
            calibrated=self._calibration is not None,
            level=decision.level,
            duration=self._input_samples / self.sampling_rate,
            rate=self.sampling_rate,
            channels=self._channels,
            channel_policy=decision.channel_policy,
            signatures=self._signatures,
            name=self.name,
        )
