"""The MFCC baseline and the corpus's Griffin-Lim attack use `transformers.audio_utils.mel_filter_bank` (issue 11
§3) instead of a hand-written bank: the features must be unchanged, so the bank is compared with the formula it
replaced (HTK mel, triangles in Hz over the FFT bins, no normalisation), bit for bit."""

import numpy as np
import pytest

from training.baselines import mfcc
from training.corpus import attacks


def handwritten_mel_filterbank(rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """The bank the project used before (training/corpus/attacks.py up to commit 3f7f1c4), (n_mels, n_fft//2+1)."""
    hz_to_mel = lambda hz: 2595.0 * np.log10(1.0 + hz / 700.0)  # noqa: E731
    mel_points = np.linspace(hz_to_mel(0.0), hz_to_mel(rate / 2), n_mels + 2)
    hz_points = 700.0 * (10 ** (mel_points / 2595.0) - 1.0)
    bins = np.linspace(0, rate / 2, n_fft // 2 + 1)
    lower, centre, upper = hz_points[:-2, None], hz_points[1:-1, None], hz_points[2:, None]
    return np.maximum(0.0, np.minimum((bins - lower) / (centre - lower), (upper - bins) / (upper - centre)))


@pytest.mark.parametrize(("rate", "n_fft", "n_mels"), [(16_000, 512, 40), (8_000, 256, 40), (16_000, 400, 80)])
def test_transformers_mel_bank_equals_the_handwritten_one(rate, n_fft, n_mels):
    np.testing.assert_array_equal(
        attacks.mel_filterbank(rate, n_fft, n_mels), handwritten_mel_filterbank(rate, n_fft, n_mels)
    )


def test_mfcc_baseline_features_are_unchanged():
    rng = np.random.default_rng(0)
    wave = np.sin(2 * np.pi * 220 * np.arange(8000) / 16_000) + 0.1 * rng.standard_normal(8000)
    power = np.abs(mfcc.stft(wave, fs=16_000, nperseg=512, noverlap=512 - 160, boundary=None)[2]) ** 2
    expected = np.log(handwritten_mel_filterbank(16_000, 512, 40) @ power + 1e-10).T
    np.testing.assert_array_equal(mfcc.log_mel(wave), expected)
    assert mfcc.mfcc_features(wave).shape == (114,)
