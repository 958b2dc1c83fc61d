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
    "as_float_samples",
    "centred_sums",
    "channel_choice",
    "decode_audio",
    "level_dbfs",
    "refuse_non_finite",
    "resample",
    "rms_dbfs",
    "sum_of_squares",
    "to_mono",
]

logger = logging.getLogger(__name__)
MIN_DOWNMIX_RATIO = 0.5  # the channel average must keep this share of the channels' mean RMS (else: channels cancel)


def as_float_samples(wave, name: str = "wave") -> np.ndarray:
    """Samples of any shape (numpy, torch or a list) -> float32 or float64 numpy, without a copy when possible.
    Integer PCM is scaled to [-1, 1) by its type's range; anything but float or integer samples is refused."""
    if hasattr(wave, "detach"):  # torch tensor
        wave = wave.detach().cpu().numpy()
    wave = np.asarray(wave)
    if wave.dtype == bool or not (np.issubdtype(wave.dtype, np.floating) or np.issubdtype(wave.dtype, np.integer)):
        raise AudioInputError(f"{name}: expected float or integer PCM samples, got dtype {wave.dtype}")
    if np.issubdtype(wave.dtype, np.integer):
        return _scale_integers(wave, name)
    if wave.dtype not in (np.float32, np.float64):
        return wave.astype(np.float32)  # float16 and friends; float32/float64 are kept (an hour is 230/460 MB)
    return wave


def refuse_non_finite(wave: np.ndarray, name: str = "wave") -> None:
    """Raise `AudioInputError` counting the NaN or infinite samples of (channels, samples) and where the first is
    (the earliest sample index in any channel)."""
    finite = np.isfinite(wave)
    if not finite.all():
        first = int(np.flatnonzero(~finite.all(axis=0))[0])
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
    """RMS level of the AC part (the clip's mean, its DC offset, removed) in dB relative to full scale: a full-scale
    sine is about -3 dBFS, a constant (digital silence, or a DC offset alone) -inf."""
    if wave.size == 0:
        return -math.inf
    _, deviations = centred_sums(wave.reshape(1, -1))
    return rms_dbfs(math.sqrt(float(deviations[0]) / wave.size))


def centred_sums(wave: np.ndarray, chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """(mean, sum of squared deviations from it) over the last axis, in two passes over float64 chunks: exact for a
    large DC offset too (a one-pass sum of squares minus the squared mean cancels). A stream combines chunks' sums."""
    mean = np.mean(wave, axis=-1, dtype=np.float64)
    total = np.zeros(wave.shape[:-1], dtype=np.float64)
    for start in range(0, wave.shape[-1], chunk):
        piece = wave[..., start : start + chunk].astype(np.float64) - mean[..., None]
        total += np.einsum("...i,...i->...", piece, piece)
    return mean, total


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
