"""The one inference path: waveform(s) of any length, rate and channel count -> calibrated scores, per-window
timeline, routing usage and novelty. The pipeline, the CLI (`molex-score`), evaluation, expert analysis and the demo
all call `score_waveforms` (through the model's `score_waveform` / `score_waveforms` / `score_file` methods).

How a clip is scored:
1. channels: averaged, or the loudest one when averaging would cancel them (see `audio_io.to_mono`); non-finite
   samples are refused; other rates are resampled to `config.sampling_rate` with soxr;
2. windows of `config.crop_samples` (the training crop) every `hop_samples` (default: half a window), the last one
   ending at the clip end; a clip shorter than one window is repeated up to it, as in training. Windows are views
   of the clip, batched `batch_size` at a time across all the clips of the call: time and memory grow linearly with
   the audio's length (attention only ever spans one window);
3. each window is normalised in float64 (when `config.normalize_audio`; huge or tiny sample values do not overflow)
   and scored: raw score = logit[bonafide] - logit[spoof], then the stored calibration (an LLR) unless
   `calibrate=False`. The clip's score is the mean of its window scores; P(bona fide) = sigmoid(score) (the
   posterior at equal priors when calibrated); the verdict is "bonafide" when score >= 0, else "spoof";
4. a clip with less than 0.1 s of 20 ms frames whose level, DC removed, reaches `silence_dbfs` gets no score and no
   verdict (`silent=True`; see silence_gate.py: a DC offset or a click is not speech) unless `flag_silence=False`
   (corpus evaluation scores every trial, as the official protocol does);
5. every window's raw and calibrated score must be finite: a NaN or an infinity is an error naming the clip and the
   step (finite_checks.py), never a verdict.
"""

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers.utils import ModelOutput

from .audio_io import (
    DEFAULT_MAX_SECONDS,
    AudioInputError,
    as_channels_first,
    decode_audio,
    level_dbfs,
    resample,
    to_mono,
)
from .feature_extraction_molex import normalize_waveforms
from .finite_checks import (
    MIN_SAMPLING_RATE,
    NonFiniteScoreError,
    check_window_scores,
    finite_number,
    int_in_range,
)
from .novelty import SIGNATURES_FILE, NoveltyResult, RoutingSignatures, check_signatures, clip_novelty
from .novelty import load_routing_signatures as _read_signatures_file
from .outputs import calibrate_scores
from .silence_gate import MIN_ACTIVE_SECONDS, active_seconds


__all__ = [
    "MAX_PLAIN_PEAK",
    "MIN_SAMPLING_RATE",
    "MIN_SECONDS",
    "SILENCE_DBFS",
    "WaveformScore",
    "WaveformScoringMixin",
    "bonafide_probability",
    "check_sampling_rate",
    "clip_result",
    "load_model_signatures",
    "score_waveforms",
    "score_window_batch",
    "verdict",
    "window_starts",
]

MIN_SECONDS = 0.1  # shorter input is refused: it holds too few frames to say anything
SILENCE_DBFS = -60.0  # RMS level below which a clip counts as near-silent (no speech energy to judge)
MAX_PLAIN_PEAK = 1e6  # louder audio is divided by its peak before the float32 cast (normalisation is scale-free)


@dataclass
class WaveformScore(ModelOutput):
    """What `score_waveform` returns for one clip. Scores: higher = more bona fide.

    Args:
        score: the clip's score, the mean of `window_scores`; an LLR when `calibrated`. None when `silent`.
        bonafide_probability: sigmoid(score). None when `silent`.
        verdict: "bonafide" (score >= 0) or "spoof"; None when `silent`.
        silent: the input's RMS level is below the silence threshold: no verdict is given.
        calibrated: the model's stored calibration was applied.
        level_dbfs: RMS level of the (mono) input's AC part (DC offset removed) in dBFS.
        window_starts: (W,) start of each window in seconds.
        window_seconds: window length in seconds.
        window_scores: (W,) score of each window (same scale as `score`).
        expert_usage: (routers, experts) mean over windows of the share of routing decisions per expert.
        window_expert_usage: (W, routers, experts) the same per window.
        router_names: the routers, in `expert_usage` row order.
        novelty: distance to the nearest known routing signature, when the model ships `routing_signatures.json`.
        duration: seconds of input audio; sampling_rate: its rate (Hz); channels: its channel count;
        channel_policy: how the channels became one ("mono", "mean of 2 channels", "channel 1 of 2 ...").
    """

    score: float | None = None
    bonafide_probability: float | None = None
    verdict: str | None = None
    silent: bool | None = None
    calibrated: bool | None = None
    level_dbfs: float | None = None
    window_starts: torch.Tensor | None = None
    window_seconds: float | None = None
    window_scores: torch.Tensor | None = None
    expert_usage: torch.Tensor | None = None
    window_expert_usage: torch.Tensor | None = None
    router_names: list[str] | None = None
    novelty: NoveltyResult | None = None
    duration: float | None = None
    sampling_rate: int | None = None
    channels: int | None = None
    channel_policy: str | None = None

    def to_dict(self) -> dict:
        """Plain JSON-ready values (lists and floats), every field present."""
        out = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                value = value.tolist()
            elif isinstance(value, NoveltyResult):
                value = {k: getattr(value, k) for k in ("nearest", "distance", "threshold", "novel")}
            out[name] = value
        return out


def window_starts(num_samples: int, crop_samples: int, hop_samples: int) -> list[int]:
    """Start of each window: every `hop_samples`, plus a last one that ends at the clip end; [0] for short clips."""
    if num_samples <= crop_samples:
        return [0]
    starts = list(range(0, num_samples - crop_samples + 1, hop_samples))
    if starts[-1] != num_samples - crop_samples:
        starts.append(num_samples - crop_samples)
    return starts


@dataclass
class _Clip:
    wave: torch.Tensor  # (samples,) float32 at the model's rate; tiled up to one window when shorter
    starts: list[int]
    duration: float
    rate: int
    channels: int
    channel_policy: str
    level: float
    active_seconds: float  # of 20 ms frames at or above the silence threshold


def check_sampling_rate(rate, name: str) -> int:
    """The rate as an int, or `AudioInputError` naming the input (not a positive integer, below 8 kHz)."""
    if not isinstance(rate, int | np.integer) or isinstance(rate, bool) or rate <= 0:
        raise AudioInputError(f"{name}: sampling_rate must be a positive integer (Hz), got {rate!r}")
    if rate < MIN_SAMPLING_RATE:
        raise AudioInputError(f"{name}: sampling_rate is {rate} Hz; at least {MIN_SAMPLING_RATE} Hz is needed "
                              "(below it the speech band is gone)")  # fmt: skip
    return int(rate)


def overflow_error(name: str) -> AudioInputError:
    return AudioInputError(f"{name}: sample values overflow when mixed or resampled (|x| near float32's limit)")


def _prepare(wave, rate: int, model_rate: int, crop: int, hop: int, name: str, silence_dbfs: float) -> _Clip:
    channels_first = as_channels_first(wave, name)
    rate = check_sampling_rate(rate, name)
    duration = channels_first.shape[1] / rate
    if duration < MIN_SECONDS:
        raise AudioInputError(f"{name} is {duration:.3f} s long; at least {MIN_SECONDS} s "
                              f"({math.ceil(MIN_SECONDS * rate)} samples at {rate} Hz) of audio is needed")  # fmt: skip
    mono, policy = to_mono(channels_first)
    level = level_dbfs(mono)
    active = active_seconds(mono, rate, silence_dbfs)
    mono = resample(mono, rate, model_rate, name)
    peak = float(max(mono.max(), -mono.min()))
    if not math.isfinite(peak):
        raise overflow_error(name)
    if peak > MAX_PLAIN_PEAK:  # normalisation is scale-free: bring absurd values into float32's comfortable range
        mono = mono / peak
    mono = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))  # 4 bytes per sample of audio
    if mono.numel() < crop:
        mono = mono.repeat(-(-crop // mono.numel()))[:crop]
    starts = window_starts(mono.numel(), crop, hop)
    return _Clip(mono, starts, duration, int(rate), channels_first.shape[0], policy, level, active)


@torch.inference_mode()
def score_window_batch(model, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, crop) float32 windows at the model's rate -> raw scores logit[bonafide] - logit[spoof] (B,) float64 and
    expert usage (B, routers, experts) float32, on the CPU. Each window is normalised first when the model says so."""
    if model.config.normalize_audio:
        windows = normalize_waveforms(windows)
    parameter = next(model.parameters())
    output = model(input_values=windows.to(device=parameter.device, dtype=parameter.dtype))
    logits = output.logits.float()
    return (logits[:, 1] - logits[:, 0]).double().cpu(), output.expert_usage.float().cpu()


def clip_result(
    model,
    window_scores: torch.Tensor,
    window_usage: torch.Tensor,
    starts: Sequence[int],
    *,
    silent: bool,
    calibrated: bool,
    level: float,
    duration: float,
    rate: int,
    channels: int,
    channel_policy: str,
    signatures: RoutingSignatures | None,
    name: str = "wave",
) -> WaveformScore:
    """The clip's `WaveformScore` from its windows' (calibrated, float64, finite) scores and usages; a silent clip
    gets the clip fields only. The one place both the offline path and a stream's `finish()` build a result."""
    config = model.config
    common = dict(
        silent=silent,
        calibrated=calibrated,
        level_dbfs=level,
        window_seconds=int(config.crop_samples) / int(config.sampling_rate),
        router_names=list(model.router_names),
        duration=duration,
        sampling_rate=rate,
        channels=channels,
        channel_policy=channel_policy,
    )
    if silent:
        return WaveformScore(**common)
    score = float(window_scores.mean())
    if not math.isfinite(score):  # finite windows whose mean overflows (|scores| near 1e308)
        raise NonFiniteScoreError(f"{name}: the mean of the window scores is not finite ({score}); no verdict")
    novelty = None
    if signatures is not None:
        novelty = clip_novelty(window_usage.numpy(), signatures, int(config.adapter.top_k))
    return WaveformScore(
        score=score,
        bonafide_probability=bonafide_probability(score),
        verdict=verdict(score),
        window_starts=torch.tensor(list(starts), dtype=torch.float64) / int(config.sampling_rate),
        window_scores=window_scores.float(),
        expert_usage=window_usage.mean(dim=0),
        window_expert_usage=window_usage,
        novelty=novelty,
        **common,
    )


def bonafide_probability(score: float) -> float:
    """sigmoid(score), without overflow for very negative scores."""
    return 1.0 / (1.0 + math.exp(-score)) if score > -700 else 0.0


def verdict(score: float) -> str:
    """The verdict for a score: bonafide when it is >= 0 (equal priors and costs), else spoof."""
    return "bonafide" if score >= 0 else "spoof"


@torch.inference_mode()
def score_waveforms(
    model,
    waves: Sequence,
    sampling_rates: int | Sequence[int],
    *,
    batch_size: int = 8,
    hop_samples: int | None = None,
    calibrate: bool = True,
    flag_silence: bool = True,
    silence_dbfs: float = SILENCE_DBFS,
    signatures: RoutingSignatures | None | str = "auto",
    names: Sequence[str] | None = None,
) -> list[WaveformScore]:
    """Score several clips, their windows batched together. See the module docstring for the steps.

    Args:
        waves: each (samples,), (channels, samples) or (samples, channels); float, or integer PCM; numpy or torch.
        sampling_rates: one rate for all clips, or one per clip (Hz).
        batch_size: windows per forward pass (bounds memory).
        hop_samples: hop between windows at the model's rate; default half a window.
        calibrate: apply `config.calibration` (when the model has one).
        flag_silence / silence_dbfs: near-silent clips get no score and no verdict.
        signatures: routing signatures for the novelty distance: "auto" reads the model folder's
            `routing_signatures.json` when there is one; None turns novelty off.
        names: how errors name each clip (file names); default "wave[i]".
    Raises:
        AudioInputError (a ValueError) naming the clip, for input that cannot be scored.
    """
    config = model.config
    crop, model_rate = int(config.crop_samples), int(config.sampling_rate)
    int_in_range("batch_size", batch_size, 1)
    hop = max(1, crop // 2) if hop_samples is None else int_in_range("hop_samples", hop_samples, 1)
    silence_dbfs = finite_number("silence_dbfs", silence_dbfs, -200.0, 0.0)
    rates = [sampling_rates] * len(waves) if isinstance(sampling_rates, int | np.integer) else list(sampling_rates)
    names = list(names) if names is not None else [f"wave[{i}]" for i in range(len(waves))]
    if len(rates) != len(waves) or len(names) != len(waves):
        raise ValueError(f"got {len(waves)} waves, {len(rates)} sampling rates and {len(names)} names")
    if signatures == "auto":
        signatures = load_model_signatures(model)
    clips = [
        _prepare(w, r, model_rate, crop, hop, n, silence_dbfs) for w, r, n in zip(waves, rates, names, strict=True)
    ]
    silent = [flag_silence and clip.active_seconds < MIN_ACTIVE_SECONDS for clip in clips]
    jobs = [(i, start) for i, clip in enumerate(clips) if not silent[i] for start in clip.starts]

    raw_scores, usages = [], []
    for first in range(0, len(jobs), batch_size):
        batch = torch.stack([clips[i].wave[s : s + crop] for i, s in jobs[first : first + batch_size]])
        raw, usage = score_window_batch(model, batch)
        raw_scores.append(raw)
        usages.append(usage)
    raw = torch.cat(raw_scores) if raw_scores else torch.zeros(0, dtype=torch.float64)
    usage = torch.cat(usages) if usages else None
    calibration = config.calibration if calibrate else None
    window_scores = calibrate_scores(raw, calibration)
    owners = [(names[i], index) for i, clip in enumerate(clips) if not silent[i] for index in range(len(clip.starts))]
    check_window_scores(raw, window_scores, owners, calibration)

    results, position = [], 0
    for i, clip in enumerate(clips):
        count = 0 if silent[i] else len(clip.starts)
        results.append(
            clip_result(
                model,
                window_scores[position : position + count],
                usage[position : position + count] if count else None,
                clip.starts,
                silent=silent[i],
                calibrated=calibration is not None,
                level=clip.level,
                duration=clip.duration,
                rate=clip.rate,
                channels=clip.channels,
                channel_policy=clip.channel_policy,
                signatures=signatures,
                name=names[i],
            )
        )
        position += count
    return results


# Signatures are read once per file version (path, modification time), shared by every thread.
_SIGNATURES_CACHE: dict[tuple, RoutingSignatures] = {}
_SIGNATURES_LOCK = threading.Lock()


def load_model_signatures(model) -> RoutingSignatures | None:
    """The model folder's (or Hub repo's) `routing_signatures.json`, checked against the model; None when absent.

    A signatures file that exists but is malformed or written for another model raises ValueError naming it."""
    path = _signatures_path(str(getattr(model, "name_or_path", "") or ""))
    if path is None:
        return None
    adapter = model.config.adapter  # the layout is in the key: an adapted model gets extended signatures
    layout = (tuple(model.router_names), tuple(adapter.expert_packs.items()), adapter.top_k)
    key = (path, os.stat(path).st_mtime_ns, layout)
    with _SIGNATURES_LOCK:
        cached = _SIGNATURES_CACHE.get(key)
    if cached is None:
        signatures = _read_signatures_file(path)
        cached = check_signatures(
            signatures, model.router_names, adapter.num_experts, adapter.top_k, path, adapter.expert_packs
        )
        with _SIGNATURES_LOCK:
            _SIGNATURES_CACHE[key] = cached
    return cached


def _signatures_path(name_or_path: str) -> str | None:
    if not name_or_path:
        return None
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, SIGNATURES_FILE)
        return path if os.path.isfile(path) else None
    try:  # a Hub repo id: the file is optional, and offline or absent means no novelty indicator
        from transformers.utils import cached_file

        return cached_file(name_or_path, SIGNATURES_FILE, _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):
        return None


class WaveformScoringMixin:
    """`score_waveform`, `score_waveforms`, `score_file` and `streaming_scorer` for MoLExForAudioClassification
    (state-free: a stream's state lives on the stream)."""

    def score_waveforms(self, waves: Sequence, sampling_rates: int | Sequence[int], **kwargs) -> list[WaveformScore]:
        """Score several clips with their windows batched together; see `scoring.score_waveforms`."""
        return score_waveforms(self, waves, sampling_rates, **kwargs)

    def score_waveform(self, wave, sampling_rate: int, **kwargs) -> WaveformScore:
        """Score one clip of any length, rate and channel count: calibrated score, P(bona fide), verdict,
        per-window timeline, expert usage and novelty. Keyword arguments as in `scoring.score_waveforms`."""
        return score_waveforms(self, [wave], [sampling_rate], **kwargs)[0]

    def score_file(
        self, path: str | os.PathLike, max_seconds: float | None = DEFAULT_MAX_SECONDS, **kwargs
    ) -> WaveformScore:
        """Decode an audio file (soundfile, else ffmpeg: WAV, FLAC, MP3, OGG/Opus, WebM, M4A/AAC, ...) and score it.

        Files longer than `max_seconds` (default 600; None: no limit) are refused from their header, before
        decoding; see `audio_decoding.decode_audio`. Running out of memory is an `AudioInputError` naming the file."""
        name = os.path.basename(os.fspath(path))
        wave, rate = decode_audio(path, max_seconds=max_seconds)
        try:
            return score_waveforms(self, [wave], [rate], names=[name], **kwargs)[0]
        except MemoryError:
            raise AudioInputError(f"{name}: scoring it needs more memory than is free ({wave.shape[1] / rate:.1f} s "
                                  f"at {rate} Hz; lower max_seconds, now {max_seconds})") from None  # fmt: skip

    def streaming_scorer(self, sampling_rate: int, **kwargs):
        """A live scorer: `push(chunk)` returns each window's score and verdict as soon as its last sample is in,
        `finish()` returns what `score_waveform` gives for the whole stream. Keyword arguments as in
        `score_waveforms`; see `streaming.StreamingScorer` for how it decides what the offline path decides."""
        from .streaming import StreamingScorer

        return StreamingScorer(self, sampling_rate, **kwargs)

    def routing_signatures(self) -> RoutingSignatures | None:
        """The routing signatures `score_waveform` uses for novelty (None when the model ships none)."""
        return load_model_signatures(self)

    @staticmethod
    def read_audio(path: str | os.PathLike, max_seconds: float | None = DEFAULT_MAX_SECONDS) -> tuple[np.ndarray, int]:
        """Decode an audio file -> (float32 (channels, samples), rate), as `score_file` does."""
        return decode_audio(path, max_seconds=max_seconds)

    @staticmethod
    def pipeline_class():
        """This model's `pipeline("audio-classification")` class (listed in `config.custom_pipelines`)."""
        from .pipeline_molex import MoLExAudioClassificationPipeline

        return MoLExAudioClassificationPipeline

    @staticmethod
    def endpoint_handler_class():
        """The Inference Endpoints handler (`handler.py`, saved beside the remote code at the folder's root)."""
        from .handler import EndpointHandler

        return EndpointHandler
