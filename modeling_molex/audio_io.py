"""Audio in, for scoring: check the samples, pick the channel, measure the level, resample. Shipped as remote code.

Files are decoded by `audio_decoding.decode_audio` (re-exported here: soundfile, else ffmpeg, within `max_seconds`).
Remote code may require only torch, transformers and safetensors, so the optional helpers are imported under `try`
and every path that needs a missing one raises an error naming the package: resampling needs `soxr`
(`pip install soxr`), only when the audio is not already at the model's rate.

Channels. Averaging channels is the usual downmix, but opposite-phase stereo (or a channel inverted by a faulty
cable) cancels to silence when averaged, and silence scores like anything. So channels are averaged only when the
average keeps at least `MIN_DOWNMIX_RATIO` of the channels' mean RMS; otherwise the loudest channel is scored
alone. The choice is reported (`channel_policy`).
"""

import logging
import math

import numpy as np

from .audio_decoding import DEFAULT_MAX_SECONDS, MAX_CHANNELS, AudioInputError, decode_audio


try:
    import soxr
except ImportError:
    soxr = None


__all__ = [
    "DEFAULT_MAX_SECONDS",
    "MAX_CHANNELS",
    "MIN_DOWNMIX_RATIO",
    "AudioInputError",
    "as_channels_first",
    "decode_audio",
    "level_dbfs",
    "resample",
    "to_mono",
]

logger = logging.getLogger(__name__)
MIN_DOWNMIX_RATIO = 0.5  # the channel average must keep this share of the channels' mean RMS (else: channels cancel)


def as_channels_first(wave, name: str = "wave") -> np.ndarray:
    """Any 1-D (samples,) or 2-D array (either axis order: the shorter axis holds the channels) -> float32 or
    float64 (channels, samples), without a copy when possible. Integer PCM is scaled to [-1, 1) by its type's range.
    Non-finite samples are refused."""
    if hasattr(wave, "detach"):  # torch tensor
        wave = wave.detach().cpu().numpy()
    wave = np.asarray(wave)
    if wave.dtype == bool or not (np.issubdtype(wave.dtype, np.floating) or np.issubdtype(wave.dtype, np.integer)):
        raise AudioInputError(f"{name}: expected float or integer PCM samples, got dtype {wave.dtype}")
    if np.issubdtype(wave.dtype, np.integer):
        wave = _scale_integers(wave, name)
    elif wave.dtype not in (np.float32, np.float64):
        wave = wave.astype(np.float32)  # float16 and friends; float32/float64 are kept (an hour is 230/460 MB)
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
    finite = np.isfinite(wave)
    if not finite.all():
        first = int(np.argwhere(~finite)[0][1])
        raise AudioInputError(
            f"{name}: {int((~finite).sum())} samples are NaN or infinite (first at sample {first}); refusing to score"
        )
    return wave


def _scale_integers(wave: np.ndarray, name: str) -> np.ndarray:
    """Integer PCM -> float32 in [-1, 1), by the array's dtype: signed x / 2^(bits-1), unsigned (8-bit WAV)
    (x - 2^(bits-1)) / 2^(bits-1). The dtype decides, never the values: int32 is also what 24- and 32-bit files
    decode to, where small values are quiet audio. int16 samples stored in a wider array are therefore quiet (by
    96 dB in int32), and a warning says how to pass them."""
    info = np.iinfo(wave.dtype)
    half = float(2 ** (info.bits - 1))  # the zero of unsigned PCM, and the full scale of both
    scaled = wave.astype(np.float64 if info.bits > 32 else np.float32)
    if info.min == 0:
        scaled -= np.float32(half) if scaled.dtype == np.float32 else half
    scaled /= np.float32(half) if scaled.dtype == np.float32 else half
    if info.bits > 16 and wave.size and np.abs(scaled).max() * half <= 32768:
        logger.warning(
            f"{name}: the {wave.dtype} samples never leave the int16 range, so they are scaled by {wave.dtype}'s range "
            f"and are {20 * math.log10(half / 32768):.1f} dB quieter than as int16; if this is int16 PCM, pass it as "
            "int16 (wave.astype(np.int16))"
        )
    return scaled.astype(np.float32) if scaled.dtype != np.float32 else scaled


def _rms(wave: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """RMS over the last axis, accumulated in float64 chunk by chunk (no full float64 copy of an hour of audio)."""
    total = np.zeros(wave.shape[:-1], dtype=np.float64)
    for start in range(0, wave.shape[-1], chunk):
        piece = wave[..., start : start + chunk].astype(np.float64)
        total += np.einsum("...i,...i->...", piece, piece)
    return np.sqrt(total / wave.shape[-1])


def to_mono(wave: np.ndarray) -> tuple[np.ndarray, str]:
    """(channels, samples) -> (samples,) and how it was obtained: `"mono"`, `"mean of N channels"` or
    `"channel i of N (the channels cancel when averaged)"` (i counted from 0)."""
    if wave.shape[0] == 1:
        return wave[0], "mono"
    mean = wave.mean(axis=0)
    channel_rms = _rms(wave)
    if _rms(mean) >= MIN_DOWNMIX_RATIO * channel_rms.mean():
        return mean, f"mean of {wave.shape[0]} channels"
    loudest = int(channel_rms.argmax())
    return wave[loudest], f"channel {loudest} of {wave.shape[0]} (the channels cancel when averaged)"


def level_dbfs(wave: np.ndarray) -> float:
    """RMS level of the AC part (the clip's mean, its DC offset, removed) in dB relative to full scale: a full-scale
    sine is about -3 dBFS, a constant (digital silence, or a DC offset alone) -inf."""
    if wave.size == 0:
        return -math.inf
    mean = float(np.mean(wave, dtype=np.float64))
    total = 0.0
    for start in range(0, wave.shape[-1], 1 << 20):  # two passes, in float64 chunks: exact for a large offset too
        piece = wave[..., start : start + (1 << 20)].astype(np.float64) - mean
        total += float(np.dot(piece.ravel(), piece.ravel()))
    rms = math.sqrt(total / wave.size)
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
