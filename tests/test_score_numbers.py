"""Numbers in the scoring path (issue 19, groups 2 and 7): the silence gate measures the AC part (a DC offset or one
click in silence is not speech), integer arrays are scaled by their dtype's range (and the level says so), the
slowest sampling rate and the fewest samples are named, options must be finite, and a score that is not finite is
an error naming the clip and where it came from, never a verdict."""

import math

import numpy as np
import pytest
import torch
from conftest import randomize_experts, tiny_backbone_config

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification
from modeling_molex.audio_io import as_channels_first, level_dbfs
from modeling_molex.scoring import MIN_SAMPLING_RATE


RATE = 16_000
FULL_SCALE_SINE_DBFS = 20 * math.log10(math.sqrt(0.5))  # -3.0103


def build_model(calibration=None) -> MoLExForAudioClassification:
    torch.manual_seed(0)
    config = MoLExConfig(
        backbone_config=tiny_backbone_config("wav2vec2"),
        adapter=MoLExAdapterConfig(num_experts=2, top_k=1, r=2),
        crop_samples=4_000,
        calibration=calibration,
    )
    model = MoLExForAudioClassification(config).eval()
    randomize_experts(model, std=0.5, seed=1)
    return model


@pytest.fixture(scope="module")
def model() -> MoLExForAudioClassification:
    return build_model()


def sine(seconds: float = 1.0, amplitude: float = 1.0, rate: int = RATE, frequency: float = 200.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return amplitude * np.sin(2 * np.pi * frequency * t)


def speech(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (sine(seconds, 0.3, frequency=180.0) + 0.05 * rng.standard_normal(int(seconds * RATE))).astype(np.float32)


# ----- the silence gate and the level: the AC part ------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.5, -0.25, 0.999])
def test_a_dc_offset_alone_is_silence(model, offset):
    result = model.score_waveform(np.full(RATE, offset, np.float32), RATE)
    assert result.silent and result.verdict is None and result.score is None
    assert result.level_dbfs == -math.inf


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_one_click_in_silence_is_silence(model, offset):
    wave = np.full(4 * RATE, offset, np.float32)
    wave[RATE] = offset + 0.49 if offset else 1.0
    result = model.score_waveform(wave, RATE)
    assert result.silent and result.verdict is None


def test_speech_on_a_dc_offset_is_judged_at_the_speech_level(model):
    clean, shifted = model.score_waveform(speech(), RATE), model.score_waveform(speech() + 0.5, RATE)
    assert not shifted.silent and shifted.verdict is not None
    assert shifted.level_dbfs == pytest.approx(clean.level_dbfs, abs=0.01)
    assert shifted.score == pytest.approx(clean.score, abs=1e-4)  # the backbone normalises the offset away


def test_quiet_speech_stays_above_the_gate_and_hiss_below(model):
    quiet = model.score_waveform(speech() * 10 ** (-45 / 20), RATE)  # about -57 dBFS
    assert not quiet.silent and -60 < quiet.level_dbfs < -50
    hiss = model.score_waveform(speech() * 1e-4, RATE)  # about -92 dBFS
    assert hiss.silent and hiss.level_dbfs < -60


def test_level_of_a_full_scale_sine_is_minus_3_dbfs():
    assert level_dbfs(sine()) == pytest.approx(FULL_SCALE_SINE_DBFS, abs=0.01)
    assert level_dbfs(sine() + 0.2) == pytest.approx(FULL_SCALE_SINE_DBFS, abs=0.01)


# ----- integer arrays: scaled by their dtype ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64])
def test_signed_integers_are_scaled_by_their_dtypes_range(model, dtype):
    full = -np.iinfo(dtype).min
    pcm = np.round(sine(amplitude=0.99) * full).astype(dtype)  # 0.99: int64's range is not exact in float64
    wave = as_channels_first(pcm)
    assert wave.dtype in (np.float32, np.float64) and float(np.abs(wave).max()) == pytest.approx(0.99, abs=1e-2)
    result = model.score_waveform(pcm, RATE)
    assert result.level_dbfs == pytest.approx(FULL_SCALE_SINE_DBFS + 20 * math.log10(0.99), abs=0.02)
    expected = model.score_waveform(sine(amplitude=0.99).astype(np.float32), RATE).score
    assert result.score == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_unsigned_integers_are_centred_on_their_midpoint(model, dtype):
    """8-bit WAV is unsigned: 128 is zero. Dividing by the dtype's minimum (0) gave infinities."""
    middle = (np.iinfo(dtype).max + 1) // 2
    pcm = (np.round(sine() * (middle - 1)) + middle).astype(dtype)
    wave = as_channels_first(pcm)
    assert abs(float(wave.mean())) < 1e-3 and float(np.abs(wave).max()) == pytest.approx(1.0, abs=1e-2)
    expected = FULL_SCALE_SINE_DBFS + 20 * math.log10((middle - 1) / middle)
    assert model.score_waveform(pcm, RATE).level_dbfs == pytest.approx(expected, abs=0.01)
    assert model.score_waveform(np.full(RATE, middle, dtype), RATE).silent  # the midpoint is silence


def test_int16_speech_inside_an_int32_array_is_scaled_by_int32(model, caplog):
    """The dtype decides, never the values: int32 is also what 24- and 32-bit WAV decode to, where small values are
    quiet audio. So int16 samples in an int32 array are 2^16 times quieter (96.3 dB), and a warning says how to pass
    them."""
    pcm16 = np.round(speech() * 32767).astype(np.int16)
    as16, as32 = model.score_waveform(pcm16, RATE), model.score_waveform(pcm16.astype(np.int32), RATE)
    assert as16.level_dbfs == pytest.approx(level_dbfs(pcm16 / 32768.0), abs=1e-3)
    assert as32.level_dbfs == pytest.approx(as16.level_dbfs - 20 * math.log10(65536), abs=1e-3)
    assert as32.silent
    assert "int16 range" in caplog.text and "int32" in caplog.text


# ----- the slowest rate, the fewest samples, finite options --------------------------------------------------------


@pytest.mark.parametrize("rate", [1, 100, MIN_SAMPLING_RATE - 1])
def test_a_rate_below_the_minimum_is_refused_by_name(model, rate):
    with pytest.raises(ValueError, match=rf"clip\.wav: sampling_rate is {rate} Hz; at least {MIN_SAMPLING_RATE} Hz"):
        model.score_waveforms(
            [np.zeros(max(rate, 1), np.float32) + speech()[: max(rate, 1)]], rate, names=["clip.wav"]
        )


def test_the_fewest_samples_are_named():
    model = build_model()
    with pytest.raises(ValueError, match=r"short\.wav is 0\.050 s long; at least 0\.1 s \(1600 samples at 16000 Hz\)"):
        model.score_waveforms([speech(0.05)], RATE, names=["short.wav"])
    assert model.score_waveform(speech(0.1), RATE).verdict is not None


@pytest.mark.parametrize(
    ("option", "value"),
    [("silence_dbfs", math.nan), ("silence_dbfs", math.inf), ("silence_dbfs", 3.0), ("silence_dbfs", "-60"),
     ("batch_size", 0), ("batch_size", 2.5), ("batch_size", math.nan), ("hop_samples", 0), ("hop_samples", math.nan)],
)  # fmt: skip
def test_options_must_be_finite_and_in_range(model, option, value):
    with pytest.raises(ValueError, match=rf"`{option}` must be"):
        model.score_waveform(speech(), RATE, **{option: value})


# ----- no verdict from a score that is not finite ------------------------------------------------------------------


def test_a_nan_weight_gives_an_error_naming_the_clip_and_the_model_not_a_verdict():
    model = build_model()
    with torch.no_grad():
        model.classifier.out_proj.bias.fill_(math.nan)
    with pytest.raises(ValueError, match=r"^clip\.wav: the model's output .* is not finite \(nan\) in window 0"):
        model.score_waveforms([speech()], RATE, names=["clip.wav"])


def test_a_calibration_that_overflows_gives_an_error_naming_the_calibration():
    model = build_model(calibration={"scale": 1e308, "bias": 0.0})
    with torch.no_grad():
        model.classifier.out_proj.weight.mul_(1e3)
    with pytest.raises(ValueError, match=r"^clip\.wav: the calibrated score .* is not finite .*config\.calibration"):
        model.score_waveforms([speech()], RATE, names=["clip.wav"])
    assert math.isfinite(model.score_waveforms([speech()], RATE, calibrate=False)[0].score)
