"""Audio in, for scoring: decode a file, check the samples, pick the channel, resample. Shipped as remote code.

Remote code may require only torch, transformers and safetensors, so the optional helpers are imported under `try`
and every path that needs a missing one raises an error naming the package:

- decoding: `soundfile` (libsndfile: WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF) first, then the `ffmpeg`/`ffprobe`
  binaries for everything else (WebM/Opus from browsers, M4A/AAC from phones, MP4, ...);
- resampling: `soxr` (`pip install soxr`), only when the audio is not already at the model's rate.

Channels. Averaging channels is the usual downmix, but opposite-phase stereo (or a channel inverted by a faulty
cable) cancels to silence when averaged, and silence scores like anything. So channels are averaged only when the
average keeps at least `MIN_DOWNMIX_RATIO` of the channels' mean RMS; otherwise the loudest channel is scored
alone. The choice is reported (`channel_policy`).
"""

import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np


try:
    import soundfile
except (ImportError, OSError):  # OSError: the wheel is there but libsndfile cannot load
    soundfile = None
try:
    import soxr
except ImportError:
    soxr = None


__all__ = [
    "MAX_CHANNELS",
    "MIN_DOWNMIX_RATIO",
    "AudioInputError",
    "as_channels_first",
    "as_float_samples",
    "channel_choice",
    "decode_audio",
    "level_dbfs",
    "refuse_non_finite",
    "resample",
    "rms_dbfs",
    "sum_of_squares",
    "to_mono",
]

MAX_CHANNELS = 16  # a 2-D array's shorter axis is its channel axis, and no real recording has more channels
MIN_DOWNMIX_RATIO = 0.5  # the channel average must keep this share of the channels' mean RMS (else: channels cancel)
FFMPEG_TIMEOUT_S = 600


class AudioInputError(ValueError):
    """Audio that cannot be scored. The message names the input (file or argument) and says why."""


def as_float_samples(wave, name: str = "wave") -> np.ndarray:
    """Samples of any shape (numpy, torch or a list) -> float32 or float64 numpy, without a copy when possible.
    Integer PCM is scaled to [-1, 1) by its type's range; anything but float or integer samples is refused."""
    if hasattr(wave, "detach"):  # torch tensor
        wave = wave.detach().cpu().numpy()
    wave = np.asarray(wave)
    if wave.dtype == bool or not (np.issubdtype(wave.dtype, np.floating) or np.issubdtype(wave.dtype, np.integer)):
        raise AudioInputError(f"{name}: expected float or integer PCM samples, got dtype {wave.dtype}")
    if np.issubdtype(wave.dtype, np.integer):
        return wave.astype(np.float32) / np.float32(-np.iinfo(wave.dtype).min)
    if wave.dtype not in (np.float32, np.float64):
        return wave.astype(np.float32)  # float16 and friends; float32/float64 are kept (an hour is 230/460 MB)
    return wave


def refuse_non_finite(wave: np.ndarray, name: str = "wave") -> None:
    """Raise `AudioInputError` counting the NaN or infinite samples of (channels, samples) and where the first is."""
    finite = np.isfinite(wave)
    if not finite.all():
        first = int(np.argwhere(~finite)[0][1])
        raise AudioInputError(
            f"{name}: {int((~finite).sum())} samples are NaN or infinite (first at sample {first}); refusing to score"
        )


def as_channels_first(wave, name: str = "wave") -> np.ndarray:
    """Any 1-D (samples,) or 2-D array (either axis order: the shorter axis holds the channels) -> float32 or
    float64 (channels, samples), without a copy when possible. Integer PCM is scaled to [-1, 1) by its type's range.
    Non-finite samples are refused."""
    wave = as_float_samples(wave, name)
    if wave.size == 0:
        raise AudioInputError(f"{name}: holds no audio samples")
    if wave.ndim == 1:
        wave = wave[None, :]
    elif wave.ndim == 2:
        if wave.shape[0] > wave.shape[1]:
            wave = wave.T
        if wave.shape[0] > MAX_CHANNELS:
            raise AudioInputError(
                f"{name}: a 2-D waveform must be (channels, samples) or (samples, channels) with at most "
                f"{MAX_CHANNELS} channels, got shape {tuple(wave.shape)}"
            )
    else:
        raise AudioInputError(f"{name}: expected shape (samples,), (channels, samples) or (samples, channels), got "
                              f"{tuple(wave.shape)}")  # fmt: skip
    refuse_non_finite(wave, name)
    return wave


def sum_of_squares(wave: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """Sum of squares over the last axis, accumulated in float64 chunk by chunk (no full float64 copy of an hour of
    audio); a stream adds up the same sums chunk by chunk."""
    total = np.zeros(wave.shape[:-1], dtype=np.float64)
    for start in range(0, wave.shape[-1], chunk):
        piece = wave[..., start : start + chunk].astype(np.float64)
        total += np.einsum("...i,...i->...", piece, piece)
    return total


def _rms(wave: np.ndarray) -> np.ndarray:
    """RMS over the last axis (see `sum_of_squares`)."""
    return np.sqrt(sum_of_squares(wave) / wave.shape[-1])


def to_mono(wave: np.ndarray) -> tuple[np.ndarray, str]:
    """(channels, samples) -> (samples,) and how it was obtained: `"mono"`, `"mean of N channels"` or
    `"channel i of N (the channels cancel when averaged)"` (i counted from 0)."""
    if wave.shape[0] == 1:
        return wave[0], "mono"
    mean = wave.mean(axis=0)
    loudest, policy = channel_choice(float(_rms(mean)), _rms(wave))
    return (mean if loudest is None else wave[loudest]), policy


def channel_choice(mean_rms: float, channel_rms: np.ndarray) -> tuple[int | None, str]:
    """The rule of `to_mono` from RMS levels (the channel average's, each channel's): (None, "mean of N channels")
    or (the loudest channel, "channel i of N (the channels cancel when averaged)"). A stream decides with it too."""
    if mean_rms >= MIN_DOWNMIX_RATIO * channel_rms.mean():
        return None, f"mean of {len(channel_rms)} channels"
    loudest = int(channel_rms.argmax())
    return loudest, f"channel {loudest} of {len(channel_rms)} (the channels cancel when averaged)"


def level_dbfs(wave: np.ndarray) -> float:
    """RMS level in dB relative to full scale (a full-scale sine is about -3 dBFS); -inf for digital silence."""
    return rms_dbfs(float(_rms(wave)))


def rms_dbfs(rms: float) -> float:
    """An RMS value in dBFS; -inf for 0."""
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


def resample(wave: np.ndarray, from_rate: int, to_rate: int, name: str = "wave") -> np.ndarray:
    """(samples,) from `from_rate` to `to_rate` Hz with soxr (high quality), or a clear error when it is missing."""
    if from_rate == to_rate:
        return wave
    if not isinstance(from_rate, int | np.integer) or from_rate <= 0:
        raise AudioInputError(f"{name}: sampling_rate must be a positive integer (Hz), got {from_rate!r}")
    if soxr is None:
        raise AudioInputError(
            f"{name}: resampling {from_rate} Hz to the model's {to_rate} Hz needs the `soxr` package "
            f"(pip install soxr), or pass audio already at {to_rate} Hz"
        )
    return soxr.resample(wave, int(from_rate), int(to_rate), quality="HQ")


def decode_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode an audio file -> (float32 (channels, samples), sampling rate): soundfile first, then ffmpeg.

    Raises `AudioInputError` naming the file when it is missing, empty or undecodable by every decoder present.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioInputError(f"{path.name}: file not found")
    if path.stat().st_size == 0:
        raise AudioInputError(f"{path.name} is empty (0 bytes)")
    reasons = []
    if soundfile is not None:
        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            return np.ascontiguousarray(data.T), int(rate)
        except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as error:
            reasons.append(f"soundfile: {str(error).splitlines()[0] if str(error) else type(error).__name__}")
    else:
        reasons.append("soundfile: not installed")
    if shutil.which("ffmpeg") and shutil.which("ffprobe"):
        try:
            return _ffmpeg_decode(path)
        except (RuntimeError, subprocess.SubprocessError, OSError, ValueError) as error:
            reasons.append(f"ffmpeg: {error}")
    else:
        reasons.append("ffmpeg: the ffmpeg/ffprobe binaries are not on PATH (apt-get install ffmpeg)")
    reasons = "; ".join(reasons).replace(str(path), path.name)  # messages reach users: no server paths in them
    raise AudioInputError(f"{path.name} is not an audio file that can be decoded ({reasons})")


def _ffmpeg_decode(path: Path) -> tuple[np.ndarray, int]:
    """First audio stream at its own rate and channel count, as float32 (channels, samples)."""
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries", "stream=sample_rate,channels",
         "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, timeout=FFMPEG_TIMEOUT_S, check=False,
    )  # fmt: skip
    fields = probe.stdout.strip().split(",")
    if probe.returncode != 0 or len(fields) != 2 or not all(f.strip().isdigit() for f in fields):
        raise RuntimeError(f"no audio stream found ({(probe.stderr.strip().splitlines() or ['?'])[-1]})")
    rate, channels = int(fields[0]), int(fields[1])
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0", "-f", "f32le", "-acodec",
         "pcm_f32le", "-"],
        capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False,
    )  # fmt: skip
    if decoded.returncode != 0:
        raise RuntimeError((decoded.stderr.decode(errors="replace").strip().splitlines() or ["decoding failed"])[-1])
    samples = np.frombuffer(decoded.stdout, dtype="<f4")
    if rate <= 0 or channels <= 0 or samples.size == 0 or samples.size % channels:
        raise RuntimeError("decoded no samples")
    return np.ascontiguousarray(samples.reshape(-1, channels).T), rate
