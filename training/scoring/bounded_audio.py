"""Decode one file for `molex-score` within `--max_seconds`, and count the windows it will be scored in.

Decoding is the model's own (`modeling_molex.audio_io.decode_audio`: soundfile, else ffmpeg). When that function
takes a `max_seconds` keyword (it reads the duration from the container before decoding and caps the samples it
decodes) the limit is handed to it. Otherwise the duration is read here from the header with `soundfile.info` when
soundfile can open the file, so a file that is too long is refused before its samples are decoded, and the decoded
duration is checked after decoding for what only ffmpeg reads.
"""

import inspect
import math
import os
from pathlib import Path

import numpy as np

from modeling_molex.audio_io import AudioInputError, decode_audio
from modeling_molex.scoring import window_starts


try:
    import soundfile
except (ImportError, OSError):  # pragma: no cover - soundfile comes with the training extra
    soundfile = None


DEFAULT_MAX_SECONDS = 600.0  # 10 minutes: far above any challenge trial, about 0.3 GB of samples at 48 kHz stereo


def _too_long(path: Path, seconds: float, max_seconds: float, source: str) -> AudioInputError:
    return AudioInputError(
        f"{path.name} is {seconds:.1f} s long ({source}); at most {max_seconds:g} s is accepted (--max_seconds)"
    )


def _takes_max_seconds(decoder) -> bool:
    try:
        return "max_seconds" in inspect.signature(decoder).parameters
    except (TypeError, ValueError):
        return False


def read_bounded_audio(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """(float32 (channels, samples), rate) of `path`, or AudioInputError when it is longer than `max_seconds`
    (None or 0: no limit) or cannot be decoded. Never MemoryError: a file too large to hold is refused by name."""
    limit = max_seconds or None
    try:
        if _takes_max_seconds(decode_audio):
            return decode_audio(path, max_seconds=limit)
        if limit is not None and soundfile is not None:
            try:
                info = soundfile.info(os.fsencode(path))
            except (RuntimeError, OSError, ValueError, TypeError):  # not soundfile's: ffmpeg decodes it below
                info = None
            if info is not None and info.samplerate > 0 and info.frames / info.samplerate > limit:
                raise _too_long(path, info.frames / info.samplerate, limit, "by its header")
        wave, rate = decode_audio(path)
    except MemoryError:
        raise AudioInputError(f"{path.name}: decoding it needs more memory than this machine has free") from None
    if limit is not None and wave.shape[-1] / rate > limit:
        raise _too_long(path, wave.shape[-1] / rate, limit, "decoded")
    return wave, rate


def window_count(num_samples: int, rate: int, config) -> int:
    """How many windows `score_waveforms` scores a clip of `num_samples` at `rate` Hz in (default hop)."""
    model_rate, crop = int(config.sampling_rate), int(config.crop_samples)
    at_model_rate = math.ceil(num_samples * model_rate / rate) if rate > 0 else num_samples
    return len(window_starts(at_model_rate, crop, max(1, crop // 2)))
