"""`MoLExFeatureExtractor`: the wav2vec2 feature extractor with checks and a normalisation that cannot overflow.

The stock `Wav2Vec2FeatureExtractor` casts to float32 and normalises there: samples of 1e20 or more overflow the
variance to inf and the clip becomes all zeros, i.e. it scores exactly like silence; NaN or inf samples pass through
and give NaN scores. Here non-finite samples are refused and the zero-mean/unit-variance normalisation runs in
float64 (same formula: population variance, epsilon 1e-7), whatever the input's magnitude.
"""

import numpy as np
import torch
from transformers import Wav2Vec2FeatureExtractor


NORMALIZATION_EPSILON = 1e-7


def normalize_waveforms(waves: torch.Tensor) -> torch.Tensor:
    """Zero mean and unit variance over the last axis (population variance, epsilon 1e-7, as
    Wav2Vec2FeatureExtractor), computed in float64 so that samples of 1e29 do not overflow into silence. The one
    normalisation of the model: the feature extractor (per clip) and `score_waveform` (per window batch) call it."""
    wide = waves.double()
    mean = wide.mean(dim=-1, keepdim=True)
    variance = wide.var(dim=-1, unbiased=False, keepdim=True)
    return (wide - mean) / torch.sqrt(variance + NORMALIZATION_EPSILON)


class MoLExFeatureExtractor(Wav2Vec2FeatureExtractor):
    """Raw mono audio -> `input_values` (+ `attention_mask`) for MoLEx; see the module docstring."""

    # Always exported with the model (also when the model itself was loaded as remote code), so that
    # `AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=True)` finds this class.
    _auto_class = "AutoFeatureExtractor"

    def __call__(self, raw_speech, *args, **kwargs):
        _check_finite(raw_speech)
        return super().__call__(raw_speech, *args, **kwargs)

    @staticmethod
    def zero_mean_unit_var_norm(
        input_values: list[np.ndarray], attention_mask: list[np.ndarray] | None, padding_value: float = 0.0
    ) -> list[np.ndarray]:
        """Normalise each clip over its real samples in float64; padding gets `padding_value`."""
        lengths = (
            np.asarray(attention_mask, dtype=np.int64).sum(-1)
            if attention_mask is not None
            else [len(vector) for vector in input_values]
        )
        normalized = []
        for vector, length in zip(input_values, lengths, strict=True):
            result = np.full(len(vector), padding_value, dtype=np.float64)
            result[:length] = normalize_waveforms(torch.from_numpy(np.asarray(vector[:length]))).numpy()
            normalized.append(result.astype(np.asarray(vector).dtype, copy=False))
        return normalized


def _check_finite(raw_speech) -> None:
    clips = raw_speech
    if isinstance(raw_speech, np.ndarray) and raw_speech.ndim == 1:
        clips = [raw_speech]
    elif isinstance(raw_speech, (list, tuple)) and raw_speech and np.ndim(raw_speech[0]) == 0:
        clips = [raw_speech]  # one clip given as a list of numbers
    for index, clip in enumerate(clips):
        samples = np.asarray(clip)
        if samples.dtype.kind in "fc" and not np.isfinite(samples).all():
            raise ValueError(f"Audio clip {index} contains NaN or infinite samples; refusing to score it")
