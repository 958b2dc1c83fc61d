"""Audio files in, within bounds: `decode_audio(path, max_seconds=600)`. Shipped as remote code.

A few kilobytes can claim hours: a FLAC or OGG header patched to 2^36 samples, or 3 h of Opus silence in 4 MB. So
the length is read from the container *before* any sample is decoded and refused over `max_seconds`, and the
decoders read under a hard cap, so that a header that lies cannot make them allocate more than the cap:

- `soundfile` (libsndfile: WAV/RF64, FLAC, OGG Vorbis/Opus, MP3, AIFF, ...) first: the header's frame count is
  checked, then blocks of `BLOCK_FRAMES` are read into a buffer sized by the header, never past the cap;
- else the `ffmpeg`/`ffprobe` binaries (WebM/Opus from browsers, M4A/AAC from phones, MP4, ...): ffprobe reads the
  container and its duration, only a local file (`-protocol_whitelist file`, the path given as `file:...`) in one of
  `AUDIO_CONTAINERS` is accepted (no playlists, concat lists, image sequences or network protocols), ffmpeg decodes
  with that demuxer forced and `-t` at the cap, and its pipe is read under a byte cap.

The cap: `max_seconds` at the file's own rate, and at most `max_seconds * VALUES_PER_SECOND` decoded values
(frames x channels; 192 kHz stereo or 48 kHz 8-channel audio fill it), so that 16 channels at 384 kHz cannot turn
120 s into 3 GB. `max_seconds=None` decodes any length (memory then grows with the real samples only, never with
what a header claims). `MemoryError` is turned into an `AudioInputError` naming the file.
"""

import json
import math
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np


try:
    import soundfile
except (ImportError, OSError):  # OSError: the wheel is there but libsndfile cannot load
    soundfile = None


__all__ = [
    "AUDIO_CONTAINERS",
    "DEFAULT_MAX_SECONDS",
    "MAX_CHANNELS",
    "VALUES_PER_SECOND",
    "AudioInputError",
    "check_max_seconds",
    "decode_audio",
]

DEFAULT_MAX_SECONDS = 600.0  # 10 minutes: far above any challenge trial; 230 MB of float32 at 48 kHz stereo
VALUES_PER_SECOND = 384_000  # decoded values per second of `max_seconds` (192 kHz stereo)
MAX_CHANNELS = 16  # a 2-D array's shorter axis is its channel axis, and no real recording has more channels
BLOCK_FRAMES = 1 << 16
UNKNOWN_FRAMES = 1 << 62  # libsndfile's "length unknown" (SF_COUNT_MAX) and the like: no length to check
FFPROBE_TIMEOUT_S = 60
FFMPEG_TIMEOUT_S = 600
# ffprobe's `format_name` of the demuxers accepted: audio (and audio-in-video) containers that read one local file.
AUDIO_CONTAINERS = frozenset({
    "aac", "ac3", "aiff", "amr", "ape", "asf", "au", "caf", "dts", "eac3", "flac", "matroska,webm",
    "mov,mp4,m4a,3gp,3g2,mj2", "mp3", "mpc", "mpc8", "ogg", "tta", "voc", "w64", "wav", "wv",
})  # fmt: skip


class AudioInputError(ValueError):
    """Audio that cannot be scored. The message names the input (file or argument) and says why."""


class _DecoderFailed(Exception):
    """This decoder cannot read the file (the next one may)."""


def check_max_seconds(max_seconds) -> float | None:
    """None (no limit) or a finite number of seconds > 0, as a float; anything else is a ValueError."""
    if max_seconds is None:
        return None
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, int | float) or not 0 < max_seconds < math.inf:
        raise ValueError(f"max_seconds must be None (no limit) or a finite number > 0 (seconds), got {max_seconds!r}")
    return float(max_seconds)


class _Limits:
    """The checks every decoder applies, with messages that name the file."""

    def __init__(self, name: str, max_seconds: float | None):
        self.name, self.max_seconds = name, max_seconds

    def check_stream(self, rate, channels) -> tuple[int, int]:
        if not isinstance(rate, int) or rate <= 0 or not isinstance(channels, int) or channels <= 0:
            raise _DecoderFailed(f"no usable audio stream (rate {rate!r}, channels {channels!r})")
        if channels > MAX_CHANNELS:
            raise AudioInputError(f"{self.name} has {channels} channels; at most {MAX_CHANNELS} are accepted")
        return rate, channels

    def frame_cap(self, rate: int, channels: int) -> int | None:
        """Most frames decoded, or None (no limit)."""
        if self.max_seconds is None:
            return None
        return min(math.floor(self.max_seconds * rate), math.floor(self.max_seconds * VALUES_PER_SECOND / channels))

    def check_length(self, frames: int, rate: int, channels: int) -> None:
        """Refuse, before decoding, a file whose container declares more than the cap."""
        cap = self.frame_cap(rate, channels)
        if cap is None or frames <= cap or frames >= UNKNOWN_FRAMES:
            return
        seconds = frames / rate
        if seconds > self.max_seconds:
            raise AudioInputError(
                f"{self.name} is {seconds:.1f} s long (by its header); at most {self.max_seconds:g} s is accepted "
                "(max_seconds)"
            )
        raise AudioInputError(
            f"{self.name} holds {channels} channels at {rate} Hz: its {seconds:.1f} s are {frames * channels:,} "
            f"samples, more than the {math.floor(self.max_seconds * VALUES_PER_SECOND):,} decoded per file "
            f"(max_seconds={self.max_seconds:g} x {VALUES_PER_SECOND:,} per second)"
        )

    def too_long(self) -> AudioInputError:
        return AudioInputError(
            f"{self.name} is longer than {self.max_seconds:g} s (decoding stopped there; its container did not say "
            f"how long it is); at most {self.max_seconds:g} s is accepted (max_seconds)"
        )


def decode_audio(path: str | os.PathLike, max_seconds: float | None = DEFAULT_MAX_SECONDS) -> tuple[np.ndarray, int]:
    """Decode an audio file -> (float32 (channels, samples), sampling rate): soundfile first, then ffmpeg.

    Raises `AudioInputError` naming the file when it is missing, empty, longer than `max_seconds` (None: no limit),
    undecodable by every decoder present, or too large for the memory that is free; `ValueError` for a
    `max_seconds` that is not None or a finite number > 0.
    """
    max_seconds = check_max_seconds(max_seconds)
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise AudioInputError(f"{name}: file not found")
    if path.stat().st_size == 0:
        raise AudioInputError(f"{name} is empty (0 bytes)")
    limits = _Limits(name, max_seconds)
    reasons = []
    try:
        if soundfile is not None:
            try:
                return _soundfile_decode(path, limits)
            except _DecoderFailed as error:
                reasons.append(f"soundfile: {error}")
        else:
            reasons.append("soundfile: not installed")
        if shutil.which("ffmpeg") and shutil.which("ffprobe"):
            try:
                return _ffmpeg_decode(path, limits)
            except _DecoderFailed as error:
                reasons.append(f"ffmpeg: {error}")
        else:
            reasons.append("ffmpeg: the ffmpeg/ffprobe binaries are not on PATH (apt-get install ffmpeg)")
    except MemoryError:
        raise AudioInputError(
            f"{name}: decoding it needs more memory than is free (lower max_seconds, now {max_seconds})"
        ) from None
    reasons = "; ".join(reasons).replace(str(path), name)  # messages reach users: no server paths in them
    raise AudioInputError(f"{name} is not an audio file that can be decoded ({reasons})")


class _FrameBuffer:
    """float32 (channels, capacity), filled block by block; grows (doubling) only past the capacity it was given."""

    def __init__(self, channels: int, capacity: int):
        self.data = np.empty((channels, max(int(capacity), 1)), dtype=np.float32)
        self.count = 0

    def append(self, block: np.ndarray) -> None:  # block: (frames, channels)
        frames = block.shape[0]
        if self.count + frames > self.data.shape[1]:
            grown = np.empty((self.data.shape[0], max(2 * self.data.shape[1], self.count + frames)), np.float32)
            grown[:, : self.count] = self.data[:, : self.count]
            self.data = grown
        self.data[:, self.count : self.count + frames] = block.T
        self.count += frames

    def result(self) -> np.ndarray:
        if self.count == self.data.shape[1]:
            return self.data
        return self.data[:, : self.count].copy()  # the header over-declared: keep only the real samples


def _soundfile_decode(path: Path, limits: _Limits) -> tuple[np.ndarray, int]:
    try:
        handle = soundfile.SoundFile(os.fsencode(path))
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as error:
        raise _DecoderFailed(_first_line(error)) from None
    with handle:
        rate, channels = limits.check_stream(int(handle.samplerate), int(handle.channels))
        declared = int(handle.frames)
        limits.check_length(declared, rate, channels)
        cap = limits.frame_cap(rate, channels)
        known = 0 <= declared < UNKNOWN_FRAMES
        capacity = min(declared, cap + 1) if cap is not None and known else BLOCK_FRAMES
        frames = _FrameBuffer(channels, capacity)
        while True:
            wanted = BLOCK_FRAMES if cap is None else min(BLOCK_FRAMES, cap + 1 - frames.count)
            try:
                block = handle.read(wanted, dtype="float32", always_2d=True)
            except (soundfile.LibsndfileError, RuntimeError, ValueError) as error:
                raise _DecoderFailed(_first_line(error)) from None
            if block.shape[0] == 0:
                break
            frames.append(block)
            if cap is not None and frames.count > cap:
                raise limits.too_long()
    return frames.result(), rate  # 0 frames stays (channels, 0): scoring says the clip holds no samples


def _probe(path: Path) -> dict:
    """ffprobe's view of a local file: its container and first audio stream (JSON)."""
    command = ["ffprobe", "-v", "error", "-protocol_whitelist", "file", "-select_streams", "a:0", "-show_entries",
               "format=format_name,duration:stream=sample_rate,channels,duration", "-of", "json", _file_url(path)]  # fmt: skip
    try:
        probe = subprocess.run(command, capture_output=True, timeout=FFPROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise _DecoderFailed(f"ffprobe did not finish within {FFPROBE_TIMEOUT_S} s") from None
    if probe.returncode != 0:
        raise _DecoderFailed((probe.stderr.decode(errors="replace").strip().splitlines() or ["ffprobe failed"])[-1])
    try:
        return json.loads(probe.stdout)
    except ValueError:
        raise _DecoderFailed("ffprobe gave no readable description") from None


def _probe_duration(probe: dict) -> float | None:
    """The container's (or stream's) duration in seconds, None when it does not say."""
    for entry in (probe.get("format", {}), *probe.get("streams", [])):
        try:
            duration = float(entry.get("duration", "nan"))
        except (TypeError, ValueError):
            continue
        if math.isfinite(duration) and duration >= 0:
            return duration
    return None


def _ffmpeg_decode(path: Path, limits: _Limits) -> tuple[np.ndarray, int]:
    """First audio stream at its own rate and channel count, as float32 (channels, samples)."""
    probe = _probe(path)
    container = str(probe.get("format", {}).get("format_name", "?"))
    if container not in AUDIO_CONTAINERS:
        raise _DecoderFailed(
            f"{container!r} is not one of the audio containers accepted ({', '.join(sorted(AUDIO_CONTAINERS))})"
        )
    streams = probe.get("streams") or [{}]
    try:
        rate, channels = int(streams[0].get("sample_rate", 0)), int(streams[0].get("channels", 0))
    except (TypeError, ValueError):
        rate = channels = 0
    if not rate:
        raise _DecoderFailed("no audio stream found")
    rate, channels = limits.check_stream(rate, channels)
    duration = _probe_duration(probe)
    if duration is not None:
        limits.check_length(round(duration * rate), rate, channels)
    cap = limits.frame_cap(rate, channels)
    command = ["ffmpeg", "-v", "error", "-nostdin", "-protocol_whitelist", "file", "-f", container.split(",")[0],
               "-i", _file_url(path), "-map", "0:a:0", "-ac", str(channels), "-ar", str(rate), "-f", "f32le",
               "-acodec", "pcm_f32le"]  # fmt: skip
    frame_bytes = 4 * channels
    byte_cap = None
    if cap is not None:
        command += ["-t", f"{(cap + 1) / rate + 1.0:.6f}"]  # ffmpeg stops itself shortly after the cap
        byte_cap = (cap + 1) * frame_bytes
    expected = (
        None if duration is None or byte_cap is None else min(byte_cap, (round(duration * rate) + 1) * frame_bytes)
    )
    data = _read_pipe([*command, "pipe:1"], byte_cap, expected)
    if byte_cap is not None and len(data) >= byte_cap:
        raise limits.too_long()
    count = len(data) // frame_bytes
    if count == 0:
        raise _DecoderFailed("decoded no samples")
    samples = np.frombuffer(data, dtype="<f4", count=count * channels).reshape(count, channels)
    return (samples.T if channels == 1 else np.ascontiguousarray(samples.T)), rate


def _read_pipe(command: list[str], byte_cap: int | None, expected: int | None) -> bytearray:
    """ffmpeg's stdout, at most `byte_cap` bytes (then ffmpeg is stopped), in a buffer sized by `expected`."""
    buffer = bytearray(expected or (1 << 20))
    filled = 0
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL, bufsize=0)
        watchdog = threading.Timer(FFMPEG_TIMEOUT_S, process.kill)
        watchdog.start()
        try:
            while byte_cap is None or filled < byte_cap:
                if filled == len(buffer):
                    grown = len(buffer) * 2 if byte_cap is None else min(len(buffer) * 2, byte_cap)
                    buffer.extend(bytes(grown - len(buffer)))
                stop = len(buffer) if byte_cap is None else min(len(buffer), byte_cap)
                read = process.stdout.readinto(memoryview(buffer)[filled:stop])
                if not read:
                    break
                filled += read
        finally:
            if process.poll() is None and (byte_cap is not None and filled >= byte_cap):
                process.kill()
            process.stdout.close()
            returncode = process.wait()
            watchdog.cancel()
        if byte_cap is not None and filled >= byte_cap:
            del buffer[filled:]
            return buffer
        if returncode != 0:
            errors.seek(0)
            lines = errors.read().decode(errors="replace").strip().splitlines()
            raise _DecoderFailed(lines[-1] if lines else f"ffmpeg stopped (exit status {returncode})")
    del buffer[filled:]
    return buffer


def _file_url(path: Path) -> str:
    """`file:/absolute/path`: a name like `concat:a|b`, `http:x` or `-y` is then a file, never a protocol or option."""
    return "file:" + os.path.abspath(os.fspath(path))


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
