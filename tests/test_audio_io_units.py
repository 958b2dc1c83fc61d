"""`modeling_molex.audio_io` function by function (issue 19, item 10): what samples are accepted and how they are
scaled, which axis holds the channels, the downmix rule and its boundary, levels in dBFS, the chunked float64 sums,
and resampling. Numpy only, no model: milliseconds per test. The same rules seen through `score_waveform` are in
test_score_waveform.py and test_score_numbers.py."""

import logging
import math
import tracemalloc

import numpy as np
import pytest
import soxr
import torch

from modeling_molex import audio_io
from modeling_molex.audio_io import (
    MAX_CHANNELS,
    MIN_DOWNMIX_RATIO,
    AudioInputError,
    as_channels_first,
    as_float_samples,
    centred_sums,
    channel_choice,
    level_dbfs,
    refuse_non_finite,
    resample,
    rms_dbfs,
    sum_of_squares,
    to_mono,
)


def noise(*shape: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


# ----- samples in ---------------------------------------------------------------------------------------------------


def test_float32_and_float64_are_kept_as_they_are_without_a_copy():
    for dtype in (np.float32, np.float64):
        wave = noise(100, dtype=dtype)
        assert as_float_samples(wave) is wave


def test_other_floats_become_float32():
    wave = as_float_samples(np.array([0.5, -0.25], dtype=np.float16))
    assert wave.dtype == np.float32 and wave.tolist() == [0.5, -0.25]


def test_torch_tensors_and_lists_are_read():
    tensor = torch.tensor([[0.5, -0.25, 0.125]], requires_grad=True)
    wave = as_float_samples(tensor)
    assert isinstance(wave, np.ndarray) and wave.dtype == np.float32 and wave.tolist() == [[0.5, -0.25, 0.125]]
    assert as_float_samples([0.5, 0.25]).tolist() == [0.5, 0.25]


@pytest.mark.parametrize(
    ("values", "dtype"),
    [(np.array([True, False]), "bool"), (np.array([1 + 1j]), "complex128"), (np.array(["a"]), "<U1"),
     (np.array([0.5, None], dtype=object), "object")],
)  # fmt: skip
def test_anything_but_float_or_integer_samples_is_refused_naming_its_dtype(values, dtype):
    with pytest.raises(
        AudioInputError, match=rf"^clip\.wav: expected float or integer PCM samples, got dtype {dtype}$"
    ):
        as_float_samples(values, "clip.wav")


@pytest.mark.parametrize(
    ("dtype", "values", "expected"),
    [(np.int8, [-128, 0, 64, 127], [-1.0, 0.0, 0.5, 127 / 128]),
     (np.int16, [-32768, 16384, 32767], [-1.0, 0.5, 32767 / 32768]),
     (np.int32, [-(2**31), 2**30], [-1.0, 0.5]),
     (np.uint8, [0, 128, 192, 255], [-1.0, 0.0, 0.5, 127 / 128]),
     (np.uint16, [0, 32768, 49152], [-1.0, 0.0, 0.5])],
)  # fmt: skip
def test_integer_pcm_is_scaled_by_its_dtypes_range_to_float32(dtype, values, expected):
    wave = as_float_samples(np.array(values, dtype=dtype))
    assert wave.dtype == np.float32 and wave.tolist() == expected


def test_int64_pcm_is_scaled_in_float64():
    wave = as_float_samples(np.array([-(2**63), 2**62, 2**61 + 1], dtype=np.int64))
    assert wave.dtype == np.float32 and wave.tolist() == [-1.0, 0.5, 0.25]


def test_64_bit_pcm_is_offset_in_float64_so_samples_near_the_midpoint_keep_their_value():
    # float32 near 2**63 is spaced 2**40 apart: offsetting there would turn both quiet samples into 0.0
    wave = as_float_samples(np.array([2**63 + 2**20, 2**63 - 2**30, 0, 2**63], dtype=np.uint64))
    assert wave.dtype == np.float32 and wave.tolist() == [2.0**-43, -(2.0**-33), -1.0, 0.0]


def peak_bytes(function, *args) -> int:
    """Peak of the memory numpy allocates while `function(*args)` runs (tracemalloc traces numpy's buffers)."""
    tracemalloc.start()
    try:
        function(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(("dtype", "float32_arrays"), [(np.int16, 1), (np.uint16, 1), (np.int32, 2), (np.uint32, 2)])
def test_integer_pcm_up_to_32_bits_is_scaled_in_one_float32_array(dtype, float32_arrays):
    # an hour at 16 kHz is 230 MB as float32: a float64 pass or a second copy would add 230 to 690 MB. int16 needs
    # only the result; wider types one float32 temporary more (the |x| of the int16-range check).
    samples = 1 << 20
    wave = np.random.default_rng(0).integers(np.iinfo(dtype).min, np.iinfo(dtype).max, samples, dtype=dtype)
    assert peak_bytes(as_float_samples, wave) < (float32_arrays + 0.25) * 4 * samples


def test_wide_integers_holding_int16_values_warn_by_how_much_quieter_they_are(caplog):
    with caplog.at_level(logging.WARNING, logger="modeling_molex.audio_io"):
        wave = as_float_samples(np.array([-32768, 0, 32767], dtype=np.int32), "take.wav")
    assert wave.tolist() == [-(2.0**-16), 0.0, 32767 / 2**31]
    [record] = caplog.records
    assert record.getMessage() == (
        "take.wav: the int32 samples never leave the int16 range, so they are scaled by int32's range and are "
        "96.3 dB quieter than as int16; if this is int16 PCM, pass it as int16 (wave.astype(np.int16))"
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="modeling_molex.audio_io"):
        as_float_samples(np.array([-32769, 0], dtype=np.int32))  # leaves the int16 range: real 32-bit audio
        as_float_samples(np.array([-32768, 32767], dtype=np.int16))  # int16 itself
    assert not caplog.records


def test_errors_and_warnings_about_samples_name_the_input_and_default_to_wave(caplog):
    with pytest.raises(AudioInputError, match=r"^clip\.wav: expected float or integer PCM samples, got dtype bool$"):
        as_channels_first(np.array([True, False]), "clip.wav")
    with caplog.at_level(logging.WARNING, logger="modeling_molex.audio_io"):
        as_channels_first(np.array([-32768, 0, 32767], dtype=np.int32), "take.wav")
    [record] = caplog.records
    assert record.getMessage().startswith("take.wav: the int32 samples never leave the int16 range")
    unnamed = [
        (as_float_samples, (np.array([True]),), "expected float or integer PCM samples"),
        (as_channels_first, (np.zeros(0, np.float32),), "holds no audio samples"),
        (refuse_non_finite, (np.array([[np.nan]]),), "1 samples are NaN or infinite"),
        (resample, (noise(10), 0, 16_000), "sampling_rate must be a positive integer"),
    ]
    for function, args, message in unnamed:
        with pytest.raises(AudioInputError, match=rf"^wave: {message}"):
            function(*args)


# ----- shapes and finite samples ------------------------------------------------------------------------------------


def test_the_shorter_axis_holds_the_channels():
    mono = noise(50)
    assert as_channels_first(mono).shape == (1, 50)
    stereo = noise(2, 50)
    assert as_channels_first(stereo) is stereo  # already (channels, samples): no copy
    np.testing.assert_array_equal(as_channels_first(stereo.T), stereo)
    square = noise(3, 3)
    np.testing.assert_array_equal(as_channels_first(square), square)  # ambiguous: read as (channels, samples)
    assert as_channels_first(noise(MAX_CHANNELS, 40)).shape == (MAX_CHANNELS, 40)


@pytest.mark.parametrize(
    ("wave", "message"),
    [(np.zeros(0, np.float32), r"^clip\.wav: holds no audio samples$"),
     (np.zeros((2, 0), np.float32), r"^clip\.wav: holds no audio samples$"),
     (np.zeros((MAX_CHANNELS + 1, 40), np.float32),
      rf"^clip\.wav: a 2-D waveform must be \(channels, samples\) or \(samples, channels\) with at most {MAX_CHANNELS} "
      rf"channels, got shape \({MAX_CHANNELS + 1}, 40\)$"),
     (np.zeros((1, 2, 40), np.float32),
      r"^clip\.wav: expected shape \(samples,\), \(channels, samples\) or \(samples, channels\), got \(1, 2, 40\)$")],
    ids=["empty", "no-samples", "too-many-channels", "3-D"],
)  # fmt: skip
def test_shapes_that_are_not_audio_are_refused_naming_the_shape(wave, message):
    with pytest.raises(AudioInputError, match=message):
        as_channels_first(wave, "clip.wav")


def test_non_finite_samples_are_counted_and_the_first_is_located_along_the_samples():
    wave = noise(2, 50)
    wave[1, 7], wave[0, 30], wave[1, 31] = np.nan, np.inf, -np.inf
    with pytest.raises(AudioInputError, match=r"^a\.wav: 3 samples are NaN or infinite \(first at sample 7\); "):
        refuse_non_finite(wave, "a.wav")
    with pytest.raises(AudioInputError, match=r"^a\.wav: 3 samples are NaN or infinite \(first at sample 7\)"):
        as_channels_first(wave.T, "a.wav")  # (samples, channels) given: the sample index, not the channel
    refuse_non_finite(noise(2, 50))  # finite: nothing raised


# ----- channels -----------------------------------------------------------------------------------------------------


def test_mono_is_itself_and_channels_are_averaged():
    mono = noise(1, 40)
    wave, policy = to_mono(mono)
    assert policy == "mono" and wave is not None
    np.testing.assert_array_equal(wave, mono[0])
    stereo = np.stack([noise(40, seed=1), noise(40, seed=2), noise(40, seed=3)])
    wave, policy = to_mono(stereo)
    assert policy == "mean of 3 channels"
    np.testing.assert_allclose(wave, stereo.mean(axis=0))


def test_channels_that_cancel_are_not_averaged_the_loudest_one_is_scored():
    left = noise(40, seed=1)
    wave, policy = to_mono(np.stack([0.5 * left, -left, 0.5 * left]))
    assert policy == "channel 1 of 3 (the channels cancel when averaged)"
    np.testing.assert_array_equal(wave, -left)


def test_the_downmix_rule_boundary_keeps_the_mean_at_exactly_the_ratio():
    assert MIN_DOWNMIX_RATIO == 0.5
    levels = np.array([1.0, 3.0])  # mean RMS 2.0: the average must keep at least 1.0
    assert channel_choice(1.0, levels) == (None, "mean of 2 channels")
    assert channel_choice(0.999, levels) == (1, "channel 1 of 2 (the channels cancel when averaged)")
    assert channel_choice(0.0, np.array([0.2, 0.1, 0.3, 0.05])) == (
        2,
        "channel 2 of 4 (the channels cancel when averaged)",
    )


# ----- levels and sums ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rms", "dbfs"), [(1.0, 0.0), (0.1, -20.0), (10.0, 20.0), (1e-5, -100.0)])
def test_rms_in_dbfs(rms, dbfs):
    assert rms_dbfs(rms) == pytest.approx(dbfs, abs=1e-9)


def test_zero_rms_is_minus_infinity():
    assert rms_dbfs(0.0) == -math.inf


def test_level_is_the_ac_rms_in_dbfs():
    t = np.arange(16_000) / 16_000
    sine = np.sin(2 * np.pi * 200 * t)
    assert level_dbfs(sine) == pytest.approx(20 * math.log10(math.sqrt(0.5)), abs=1e-6)
    assert level_dbfs(0.1 * sine + 0.7) == pytest.approx(20 * math.log10(0.1 * math.sqrt(0.5)), abs=1e-6)
    assert level_dbfs(np.full(100, 0.25)) == -math.inf  # a DC offset alone: no AC part
    assert level_dbfs(np.zeros(0, np.float32)) == -math.inf


def test_sums_are_exact_across_chunks_in_float64():
    wave = noise(2, 1000, seed=4)
    expected = (wave.astype(np.float64) ** 2).sum(axis=-1)
    for chunk in (1, 7, 999, 1000, 4096):
        np.testing.assert_allclose(sum_of_squares(wave, chunk=chunk), expected, rtol=1e-12)
    assert sum_of_squares(wave).dtype == np.float64
    np.testing.assert_allclose(sum_of_squares(wave), expected, rtol=1e-12)
    big = np.full(3, 3e38, np.float32)  # squares overflow float32, not float64
    assert sum_of_squares(big)[()] == pytest.approx(3 * 9e76)


def test_centred_sums_are_exact_on_a_large_dc_offset_across_chunks():
    ac = noise(2, 1000, seed=5).astype(np.float64)
    wave = (ac + 1e4).astype(np.float32)  # a one-pass sum of squares minus the squared mean loses these digits
    exact_mean = wave.astype(np.float64).mean(axis=-1)
    exact = ((wave.astype(np.float64) - exact_mean[:, None]) ** 2).sum(axis=-1)
    for chunk in (1, 13, 1000, 1 << 20):
        mean, deviations = centred_sums(wave, chunk=chunk)
        np.testing.assert_allclose(mean, exact_mean, rtol=1e-15)
        np.testing.assert_allclose(deviations, exact, rtol=1e-9)
    mean, deviations = centred_sums(wave)
    assert mean.dtype == deviations.dtype == np.float64
    np.testing.assert_allclose(deviations, exact, rtol=1e-9)


def test_centred_sums_are_over_the_last_axis_of_any_shape():
    mono = noise(100, seed=7).astype(np.float64)
    for chunk in (1, 30, 1 << 20):
        mean, deviations = centred_sums(mono, chunk=chunk)
        assert mean.shape == deviations.shape == ()
        assert mean == pytest.approx(mono.mean(), rel=1e-12)
        assert deviations == pytest.approx(((mono - mono.mean()) ** 2).sum(), rel=1e-12)
    batch = noise(2, 3, 50, seed=8).astype(np.float64)
    mean, deviations = centred_sums(batch, chunk=7)
    assert mean.shape == deviations.shape == (2, 3)
    np.testing.assert_allclose(mean, batch.mean(axis=-1), rtol=1e-12)
    np.testing.assert_allclose(
        deviations, ((batch - batch.mean(axis=-1, keepdims=True)) ** 2).sum(axis=-1), rtol=1e-12
    )


# ----- resampling ---------------------------------------------------------------------------------------------------


def test_the_models_rate_is_kept_as_it_is():
    wave = noise(800)
    assert resample(wave, 16_000, 16_000) is wave


def test_other_rates_are_resampled_with_soxr_high_quality():
    wave = noise(8_000, seed=6).astype(np.float64)
    out = resample(wave, 8_000, 16_000, "a.wav")
    np.testing.assert_array_equal(out, soxr.resample(wave, 8_000, 16_000, quality="HQ"))
    assert out.size == 16_000
    np.testing.assert_array_equal(resample(wave, np.int64(8_000), 22_050), soxr.resample(wave, 8_000, 22_050, "HQ"))


def test_any_positive_integer_rate_is_resampled_down_to_1_hz():
    wave = noise(40, seed=9).astype(np.float64)
    np.testing.assert_array_equal(resample(wave, 1, 2), soxr.resample(wave, 1, 2, quality="HQ"))


@pytest.mark.parametrize("rate", [0, -8_000, 8_000.0, "8000"])
def test_a_rate_that_is_not_a_positive_integer_is_refused(rate):
    with pytest.raises(AudioInputError, match=r"^a\.wav: sampling_rate must be a positive integer \(Hz\), got "):
        resample(noise(100), rate, 16_000, "a.wav")


def test_without_soxr_resampling_names_the_package_and_the_rates(monkeypatch):
    monkeypatch.setattr(audio_io, "soxr", None)
    with pytest.raises(AudioInputError) as refused:
        resample(noise(100), 8_000, 16_000, "a.wav")
    assert str(refused.value) == (
        "a.wav: resampling 8000 Hz to the model's 16000 Hz needs the `soxr` package (pip install soxr), or pass "
        "audio already at 16000 Hz"
    )
    wave = noise(100)
    assert resample(wave, 16_000, 16_000) is wave  # no soxr needed at the model's rate
