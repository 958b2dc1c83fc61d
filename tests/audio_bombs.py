"""Hostile audio files made in a few milliseconds: tiny real files whose headers are patched to claim ~2^36
samples ("header bombs"), and a real 3-hour Opus file of silence (4 MB) made by stream-copying one minute.

The bombs are what an attacker uploads: a few kilobytes that make a naive decoder allocate the claimed length up
front (2^36 float32 samples = 256 GiB) before it finds out the data is not there.
"""

import struct
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf


CLAIMED_FRAMES = (1 << 36) - 1  # the largest count a FLAC STREAMINFO block can hold (36 bits)
RATE = 16_000


def tone(seconds: float = 1.0, rate: int = RATE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 200 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def flac_bomb(path: Path) -> Path:
    """A 1 s FLAC whose STREAMINFO says it holds 2^36 - 1 samples."""
    sf.write(path, tone(), RATE, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # first metadata block: STREAMINFO, its data at byte 8
    field = int.from_bytes(data[18:26], "big")  # 20 bits rate, 3 channels, 5 bits per sample, 36 total samples
    field = (field & ~((1 << 36) - 1)) | CLAIMED_FRAMES
    data[18:26] = field.to_bytes(8, "big")
    path.write_bytes(data)
    return path


def _ogg_crc(page: bytes) -> int:
    """The Ogg page checksum: CRC-32, polynomial 0x04C11DB7, not reflected, over the page with its CRC zeroed."""
    crc = 0
    for byte in page:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
    return crc


def ogg_bomb(path: Path, subtype: str = "VORBIS") -> Path:
    """A 4 s OGG (Vorbis or Opus) whose last page's granule position claims 2^36 samples (checksum fixed, so every
    reader believes it)."""
    rate = RATE if subtype == "VORBIS" else 48_000
    sf.write(path, tone(4.0, rate), rate, format="OGG", subtype=subtype)
    data = bytearray(path.read_bytes())
    last = data.rfind(b"OggS")
    segments = data[last + 26]
    size = 27 + segments + sum(data[last + 27 : last + 27 + segments])
    data[last + 6 : last + 14] = struct.pack("<q", 1 << 36)
    data[last + 22 : last + 26] = bytes(4)
    data[last + 22 : last + 26] = struct.pack("<I", _ogg_crc(bytes(data[last : last + size])))
    path.write_bytes(data)
    return path


def rf64_bomb(path: Path) -> Path:
    """A 1 s RF64 whose ds64 chunk claims 2^36 samples (2^37 data bytes)."""
    sf.write(path, tone(), RATE, format="RF64", subtype="PCM_16")
    data = bytearray(path.read_bytes())
    ds64 = data.find(b"ds64")
    assert data[:4] == b"RF64" and ds64 > 0
    data[ds64 + 16 : ds64 + 24] = struct.pack("<Q", 2 << 36)  # data size (bytes)
    data[ds64 + 24 : ds64 + 32] = struct.pack("<Q", 1 << 36)  # sample count
    path.write_bytes(data)
    return path


def wav_bomb(path: Path) -> Path:
    """A 1 s WAV whose data chunk claims 4 GiB."""
    sf.write(path, tone(), RATE, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    chunk = data.find(b"data")
    data[chunk + 4 : chunk + 8] = struct.pack("<I", 0xFFFFFFF0)
    path.write_bytes(data)
    return path


def three_hour_opus(folder: Path) -> Path:
    """A real 3-hour Ogg Opus file of silence (about 4 MB): one minute encoded, then stream-copied 180 times."""
    minute = folder / "minute.opus"
    long = folder / "three_hours.opus"
    common = ["ffmpeg", "-v", "error", "-nostdin", "-y"]
    subprocess.run([*common, "-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono", "-t", "60", "-c:a", "libopus",
                    "-b:a", "6k", "-application", "voip", str(minute)], check=True)  # fmt: skip
    subprocess.run([*common, "-stream_loop", "179", "-i", str(minute), "-c", "copy", str(long)], check=True)
    return long


def ffmpeg_encode(source: Path, target: Path, *codec_args: str) -> Path:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(source), *codec_args, str(target)], check=True
    )
    return target
