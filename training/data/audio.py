"""Waveform I/O and the crop / pad policy: file → mono float32 at 16 kHz → fixed-length clip(s).

Decoding, the channel choice and resampling are the model's own (`modeling_molex.audio_io`, shipped with the model
so that training, evaluation, the CLI, the pipeline and the demo read audio identically): soundfile first, then the
ffmpeg binary for WebM/Opus, M4A/AAC and other containers; soxr for resampling. We deliberately avoid
`datasets.Audio`, torchaudio and torchcodec: in datasets 5.x and torchaudio ≥ 2.9 those need FFmpeg shared libraries
that CPU-only machines and CI images usually lack (see the project notes, hf_apis.md §4).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from modeling_molex.audio_io import AudioInputError, as_channels_first, decode_audio, resample, to_mono
from modeling_molex.scoring import window_starts


__all__ = ["AudioDecodeError", "ClipPolicy", "crop_or_pad", "eval_windows", "load_audio", "normalize"]


class AudioDecodeError(RuntimeError):
    """A file that cannot be turned into a waveform: unreadable, corrupt, empty or non-finite. Names the file."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        super().__init__(f"cannot decode audio file {self.path}: {reason}")


@dataclass(frozen=True)
class ClipPolicy:
    """How a waveform becomes model input, for training and for scoring.

    Args:
        sampling_rate: rate every clip is resampled to (the SSL encoders expect 16 kHz).
        num_samples: training clip length. 64,600 samples = 4.04 s, the ASVspoof baselines' length (AASIST, RawNet2).
        train_crop: "random" takes a uniformly random window of a longer clip; "start" takes the first samples.
        pad: how a clip shorter than `num_samples` is filled: "repeat" tiles the clip (the ASVspoof convention,
            so the model never sees long silences that only bona fide or only spoof clips might have); "zero"
            appends zeros that the attention mask marks as padding.
        eval_mode: "full" keeps the whole clip (batches are zero-padded and masked); "center" takes the central
            `num_samples` (padded like training when shorter); "windows" cuts the clip into `num_samples` windows
            every `window_hop` samples, the last one aligned to the clip end, so scores can be averaged per utterance.
        window_hop: hop between eval windows; defaults to `num_samples` (no overlap).
        normalize: per-clip zero mean / unit variance over the signal samples, as
            `Wav2Vec2FeatureExtractor(do_normalize=True)` does.
    """

    sampling_rate: int = 16_000
    num_samples: int = 64_600
    train_crop: Literal["random", "start"] = "random"
    pad: Literal["repeat", "zero"] = "repeat"
    eval_mode: Literal["full", "center", "windows"] = "full"
    window_hop: int | None = None
    normalize: bool = True

    def __post_init__(self):
        choices = {
            "train_crop": ("random", "start"),
            "pad": ("repeat", "zero"),
            "eval_mode": ("full", "center", "windows"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"ClipPolicy.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.sampling_rate <= 0 or self.num_samples <= 0:
            raise ValueError(f"ClipPolicy.sampling_rate and num_samples must be > 0, got {self}")
        if self.window_hop is not None and self.window_hop <= 0:
            raise ValueError(f"ClipPolicy.window_hop must be > 0, got {self.window_hop}")


def load_audio(path: str | Path, sampling_rate: int = 16_000) -> np.ndarray:
    """Decode any format soundfile or ffmpeg reads, make it mono (channels averaged unless they cancel: see
    `modeling_molex.audio_io.to_mono`), resample.

    Returns a 1-D float32 array. Raises `AudioDecodeError` naming the file on anything unusable (unreadable, empty,
    NaN or infinite samples), because a silently empty or NaN clip would poison a whole training batch.
    """
    try:
        data, file_rate = decode_audio(path)
        wave, _ = to_mono(as_channels_first(data, str(path)))
        wave = resample(wave, file_rate, sampling_rate, str(path))
    except (AudioInputError, OSError) as error:
        raise AudioDecodeError(path, str(error)) from error
    return np.ascontiguousarray(wave, dtype=np.float32)


def _pad(wave: np.ndarray, length: int, mode: str) -> tuple[np.ndarray, int]:
    """Fill `wave` up to `length`; returns the clip and how many of its samples are signal (for the mask)."""
    if mode == "repeat":
        return np.tile(wave, -(-length // len(wave)))[:length], length
    return np.concatenate([wave, np.zeros(length - len(wave), dtype=wave.dtype)]), len(wave)


def crop_or_pad(
    wave: np.ndarray, length: int, crop: Literal["random", "start", "center"], pad: str, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Return exactly `length` samples and the number of signal samples (the rest is zero padding).

    `rng` is only drawn from for random crops of clips longer than `length`, so the same seed gives the same crops.
    """
    if len(wave) < length:
        return _pad(wave, length, pad)
    extra = len(wave) - length
    start = {"start": 0, "center": extra // 2}.get(crop)
    if start is None:
        start = int(rng.integers(0, extra + 1))
    return wave[start : start + length], length


def eval_windows(wave: np.ndarray, length: int, hop: int, pad: str) -> list[tuple[np.ndarray, int]]:
    """Cut a clip into `length`-sample windows every `hop` samples; the last window ends at the clip end (the
    model's own window placement, `modeling_molex.scoring.window_starts`).

    A clip shorter than `length` gives one padded window. Every sample is covered by at least one window.
    """
    if len(wave) < length:
        return [_pad(wave, length, pad)]
    return [(wave[s : s + length], length) for s in window_starts(len(wave), length, hop)]


def normalize(wave: np.ndarray, num_signal: int) -> np.ndarray:
    """Zero mean, unit variance over the first `num_signal` samples; padding stays zero."""
    signal = wave[:num_signal]
    out = np.zeros_like(wave)
    out[:num_signal] = (signal - signal.mean()) / np.sqrt(signal.var() + 1e-7)
    return out
