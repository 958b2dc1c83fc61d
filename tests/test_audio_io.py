"""Reading real-world files: browser recordings (WebM/Opus) and phone recordings (M4A/AAC) decode through the
ffmpeg fallback in the model's decoder, for the collator, the CLI, the pipeline and the demo alike."""

import subprocess

import numpy as np
import pytest
import soundfile as sf

from modeling_molex.audio_io import AudioInputError, decode_audio
from training.data.audio import load_audio


def encode(tmp_path, suffix: str, codec_args: list[str], rate: int = 48_000, channels: int = 1):
    """A 1 s 440 Hz tone written as WAV, then encoded by the ffmpeg CLI (the way browsers and phones store it)."""
    t = np.arange(rate) / rate
    tone = 0.4 * np.sin(2 * np.pi * 440 * t)
    source = tmp_path / "tone.wav"
    sf.write(source, np.stack([tone] * channels, axis=1), rate)
    target = tmp_path / f"recording{suffix}"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(source), *codec_args, str(target)], check=True)
    return target


@pytest.mark.parametrize(
    ("suffix", "codec_args", "channels"),
    [(".webm", ["-c:a", "libopus", "-b:a", "48k"], 1), (".m4a", ["-c:a", "aac", "-b:a", "96k"], 2)],
    ids=["webm-opus-browser", "m4a-aac-phone"],
)
def test_webm_opus_and_m4a_aac_decode_to_the_tone(tmp_path, suffix, codec_args, channels):
    path = encode(tmp_path, suffix, codec_args, channels=channels)
    with pytest.raises(Exception):  # noqa: B017 - the point: libsndfile alone cannot read these containers
        sf.read(str(path))
    data, rate = decode_audio(path)
    assert rate == 48_000 and data.shape[0] == channels and abs(data.shape[1] - 48_000) < 4_000
    wave = load_audio(path, 16_000)
    assert abs(wave.size - 16_000) < 1_500
    peak_hz = np.argmax(np.abs(np.fft.rfft(wave))) * 16_000 / wave.size
    assert abs(peak_hz - 440) <= 3


def test_undecodable_file_names_every_decoder_that_tried(tmp_path):
    path = tmp_path / "broken.m4a"
    path.write_bytes(b"\x00\x00\x00\x18ftypM4A " + bytes(range(200)))
    with pytest.raises(AudioInputError, match=r"broken\.m4a is not an audio file .*soundfile: .*ffmpeg: "):
        decode_audio(path)
