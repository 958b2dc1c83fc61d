"""Decoding within bounds (issue 19, group 1): the duration is read from the container before any sample is decoded
and refused over `max_seconds`, naming the file and both durations; the decoders read under a hard sample cap, so a
header that lies cannot allocate more than the cap; `MemoryError` never reaches a user; ffmpeg opens only local
files in audio containers (no playlists, concat lists or network protocols).

Memory is measured with tracemalloc (numpy's buffers and Python's bytes are traced), never time.
"""

import math
import os
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from audio_bombs import (
    CLAIMED_FRAMES,
    RATE,
    ffmpeg_encode,
    flac_bomb,
    ogg_bomb,
    rf64_bomb,
    three_hour_opus,
    tone,
    wav_bomb,
)

from modeling_molex import audio_decoding
from modeling_molex.audio_io import DEFAULT_MAX_SECONDS, AudioInputError, decode_audio


MiB = 1 << 20


def peak_memory(function, *args, **kwargs):
    """(result or the exception raised, peak bytes traced while it ran)."""
    tracemalloc.start()
    try:
        try:
            outcome = function(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - the caller asserts on it
            outcome = error
        return outcome, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def without_soundfile(monkeypatch):
    """Only the ffmpeg path: as on a machine without libsndfile, or for a container libsndfile cannot read."""
    monkeypatch.setattr(audio_decoding, "soundfile", None)


@pytest.fixture(scope="module")
def three_hours(tmp_path_factory):
    return three_hour_opus(tmp_path_factory.mktemp("opus"))


def test_the_default_limit_is_ten_minutes():
    assert DEFAULT_MAX_SECONDS == 600.0


@pytest.mark.parametrize("make", [flac_bomb, ogg_bomb, lambda p: ogg_bomb(p, "OPUS")], ids=["flac", "ogg", "opus"])
def test_header_bombs_are_refused_by_their_header_without_allocating(tmp_path, make):
    path = make(tmp_path / ("bomb" + (".flac" if make is flac_bomb else ".ogg")))
    assert path.stat().st_size < 32_000 and sf.info(str(path)).frames >= CLAIMED_FRAMES - 1_000  # Opus: less pre-skip
    error, peak = peak_memory(decode_audio, path, max_seconds=120)
    assert isinstance(error, AudioInputError), error
    message = str(error)
    assert message.startswith(path.name) and "header" in message and "at most 120 s" in message
    assert "4294967." in message or "1431655." in message  # the claimed duration: 2^36 samples at 16 or 48 kHz
    assert peak < 4 * MiB


@pytest.mark.parametrize("make", [flac_bomb, ogg_bomb], ids=["flac", "ogg"])
def test_without_a_limit_a_lying_header_allocates_only_the_real_samples(tmp_path, make):
    path = make(tmp_path / ("bomb" + (".flac" if make is flac_bomb else ".ogg")))
    (wave, rate), peak = peak_memory(decode_audio, path, max_seconds=None)
    real = 4.0 if make is ogg_bomb else 1.0
    assert rate == RATE and wave.shape[0] == 1 and abs(wave.shape[1] - real * RATE) < 0.05 * RATE
    assert peak < 4 * MiB + 3 * wave.nbytes


def test_rf64_and_wav_bombs_decode_to_their_real_second_or_are_refused_by_ffprobe(tmp_path, monkeypatch):
    for path in (rf64_bomb(tmp_path / "bomb.rf64"), wav_bomb(tmp_path / "bomb.wav")):
        (wave, rate), peak = peak_memory(decode_audio, path, max_seconds=120)
        assert (rate, wave.shape) == (RATE, (1, RATE)) and peak < 4 * MiB
    monkeypatch.setattr(audio_decoding, "soundfile", None)
    error, peak = peak_memory(decode_audio, tmp_path / "bomb.rf64", max_seconds=120)
    assert isinstance(error, AudioInputError) and "header" in str(error) and "bomb.rf64" in str(error)
    assert peak < 4 * MiB
    (wave, _), peak = peak_memory(decode_audio, tmp_path / "bomb.rf64", max_seconds=None)
    assert wave.shape == (1, RATE) and peak < 4 * MiB + 3 * wave.nbytes  # the pipe carries only the real samples


def test_three_hours_of_opus_are_refused_before_decoding_with_both_durations(three_hours):
    error, peak = peak_memory(decode_audio, three_hours, max_seconds=120)
    assert isinstance(error, AudioInputError)
    assert str(error).startswith("three_hours.opus is 10800.0 s long (by its header); at most 120 s")
    assert peak < 4 * MiB


def test_three_hours_through_ffmpeg_are_refused_by_ffprobe(three_hours, without_soundfile):
    error, peak = peak_memory(decode_audio, three_hours, max_seconds=120)
    assert isinstance(error, AudioInputError) and "10800.0 s long (by its header)" in str(error)
    assert peak < 4 * MiB


def test_a_container_that_hides_its_duration_is_cut_at_the_cap(three_hours, without_soundfile, monkeypatch):
    """When ffprobe reports no duration (live recordings, streams), ffmpeg decodes at most `max_seconds` (plus one
    second) and the pipe is read under a byte cap, so memory stays at the cap, not at three hours (2 GB)."""
    monkeypatch.setattr(audio_decoding, "_probe_duration", lambda probe: None)
    error, peak = peak_memory(decode_audio, three_hours, max_seconds=20)
    assert isinstance(error, AudioInputError)
    assert str(error).startswith("three_hours.opus is longer than 20 s (decoding stopped there;")
    cap_bytes = 21 * 48_000 * 4
    assert peak < 3 * cap_bytes


def test_the_default_limit_applies_when_none_is_given(three_hours):
    with pytest.raises(AudioInputError, match=r"at most 600 s is accepted"):
        decode_audio(three_hours)


@pytest.mark.parametrize("value", [math.nan, math.inf, 0.0, -5.0, "60"])
def test_max_seconds_must_be_a_finite_positive_number_or_none(tmp_path, value):
    sf.write(tmp_path / "ok.wav", tone(), RATE)
    with pytest.raises(ValueError, match=r"max_seconds must be None \(no limit\) or a finite number > 0"):
        decode_audio(tmp_path / "ok.wav", max_seconds=value)


def test_a_file_just_over_the_limit_names_both_durations(tmp_path):
    sf.write(tmp_path / "six.flac", tone(6.0), RATE)
    with pytest.raises(AudioInputError, match=r"^six\.flac is 6\.0 s long \(by its header\); at most 5 s is accepted"):
        decode_audio(tmp_path / "six.flac", max_seconds=5)
    wave, rate = decode_audio(tmp_path / "six.flac", max_seconds=6)
    assert wave.shape == (1, 6 * RATE) and rate == RATE


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_decoded_samples_equal_soundfiles_own_read(tmp_path, channels):
    data = np.stack([tone(1.3, seed=c) for c in range(channels)], axis=1)
    sf.write(tmp_path / "clip.flac", data, RATE, subtype="PCM_24")
    expected, _ = sf.read(str(tmp_path / "clip.flac"), dtype="float32", always_2d=True)
    wave, rate = decode_audio(tmp_path / "clip.flac")
    assert rate == RATE and wave.dtype == np.float32 and wave.flags.c_contiguous
    np.testing.assert_array_equal(wave, expected.T)


def test_ffmpeg_path_decodes_what_soundfile_decodes(tmp_path, without_soundfile):
    data = np.stack([tone(0.7, seed=1), tone(0.7, seed=2)], axis=1)
    sf.write(tmp_path / "clip.wav", data, RATE, subtype="FLOAT")
    wave, rate = decode_audio(tmp_path / "clip.wav")
    assert rate == RATE and wave.flags.c_contiguous
    np.testing.assert_array_equal(wave, data.T)


def test_a_playlist_is_not_an_audio_container(tmp_path):
    """ffmpeg would open an HLS playlist and then fetch what it lists (other local files, or URLs)."""
    clip = ffmpeg_encode(_wav(tmp_path), tmp_path / "segment.ts", "-c:a", "aac")
    playlist = tmp_path / "list.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:1.0,\n{clip}\n#EXT-X-ENDLIST\n")
    with pytest.raises(AudioInputError, match=r"list\.m3u8 is not an audio file that can be decoded .*ffmpeg: "):
        decode_audio(playlist)


def test_only_whitelisted_audio_containers_are_decoded(tmp_path, monkeypatch):
    image = ffmpeg_encode(_wav(tmp_path), tmp_path / "picture.png", "-f", "lavfi", "-i", "color=c=red:s=8x8",
                          "-map", "1:v", "-frames:v", "1")  # fmt: skip
    with pytest.raises(AudioInputError, match=r"picture\.png is not an audio file"):
        decode_audio(image)
    monkeypatch.setattr(audio_decoding, "_probe", lambda path: {"format": {"format_name": "concat"}, "streams": []})
    monkeypatch.setattr(audio_decoding, "soundfile", None)
    with pytest.raises(AudioInputError, match=r"'concat' is not one of the audio containers accepted"):
        decode_audio(_wav(tmp_path))


def test_protocol_like_file_names_are_read_as_local_files(tmp_path, without_soundfile):
    """A name such as `concat:a|b` or `http:...` is a file in this folder, never an ffmpeg protocol."""
    folder = tmp_path / "concat:x.wav|y.wav"
    folder.mkdir()
    clip = ffmpeg_encode(_wav(tmp_path), folder / "http:clip.webm", "-c:a", "libopus", "-b:a", "32k")
    wave, rate = decode_audio(clip)
    assert rate == 48_000 and abs(wave.shape[1] - 48_000) < 4_000


def test_a_file_name_that_is_not_utf8_decodes(tmp_path):
    name = os.fsdecode(b"caf\xe9.flac")  # Latin-1 bytes: a surrogate-escaped str
    sf.write(str(tmp_path / "plain.flac"), tone(), RATE)
    os.rename(tmp_path / "plain.flac", os.path.join(os.fsencode(tmp_path), b"caf\xe9.flac"))
    wave, rate = decode_audio(tmp_path / name)
    assert wave.shape == (1, RATE) and rate == RATE


def test_memory_error_becomes_an_error_naming_the_file(tmp_path, monkeypatch):
    sf.write(tmp_path / "big.flac", tone(), RATE)

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(audio_decoding.np, "empty", out_of_memory)
    with pytest.raises(AudioInputError, match=r"^big\.flac: decoding it needs more memory than is free"):
        decode_audio(tmp_path / "big.flac")


def _wav(folder):
    path = folder / "source.wav"
    if not path.exists():
        sf.write(path, tone(), RATE)
    return path


@pytest.fixture(scope="module")
def tiny_model():
    import torch
    from conftest import tiny_backbone_config

    from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification

    torch.manual_seed(0)
    config = MoLExConfig(
        backbone_config=tiny_backbone_config("wav2vec2"),
        adapter=MoLExAdapterConfig(num_experts=2, top_k=1, r=2),
        crop_samples=4000,
    )
    return MoLExForAudioClassification(config).eval()


def test_score_file_and_read_audio_share_the_decoders_limit(tiny_model, tmp_path, three_hours):
    sf.write(tmp_path / "six.flac", tone(6.0), RATE)
    with pytest.raises(AudioInputError, match=r"^three_hours\.opus is 10800\.0 s long .*at most 600 s"):
        tiny_model.score_file(three_hours)
    with pytest.raises(AudioInputError, match=r"^six\.flac is 6\.0 s long \(by its header\); at most 5 s"):
        tiny_model.score_file(tmp_path / "six.flac", max_seconds=5)
    with pytest.raises(AudioInputError, match=r"at most 5 s"):
        tiny_model.read_audio(tmp_path / "six.flac", max_seconds=5)
    assert tiny_model.score_file(tmp_path / "six.flac", max_seconds=None).duration == pytest.approx(6.0)


def test_memory_error_while_scoring_a_file_names_the_file(tiny_model, tmp_path, monkeypatch):
    from modeling_molex import scoring

    sf.write(tmp_path / "clip.flac", tone(), RATE)

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(scoring, "score_waveforms", out_of_memory)
    with pytest.raises(AudioInputError, match=r"^clip\.flac: scoring it needs more memory than is free"):
        tiny_model.score_file(tmp_path / "clip.flac")
