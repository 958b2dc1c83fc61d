"""What `MoLExForAudioClassification.forward` accepts, checked before any computation.

A silent wrong answer is worse than an error: a clip shorter than one frame of the convolutional feature encoder, a
mask that does not describe right-padding, or NaN samples would all give a score (one that depends on the other
clips of the batch, or NaN) instead of failing. Every such input gets an error that says what was expected.
"""

import torch
from transformers import PretrainedConfig

from .whisper_encoder import MINIMUM_INPUT_SAMPLES as WHISPER_MINIMUM_INPUT_SAMPLES


def minimum_input_samples(backbone_config: PretrainedConfig) -> int:
    """Fewest samples that give one output frame of the backbone's convolutional feature encoder (400 = 25 ms at
    16 kHz for wav2vec2 / XLS-R / WavLM / HuBERT); 201 for Whisper's centred STFT (see whisper_encoder.py)."""
    if backbone_config.model_type == "whisper":
        return WHISPER_MINIMUM_INPUT_SAMPLES
    needed = 1
    for kernel, stride in reversed(list(zip(backbone_config.conv_kernel, backbone_config.conv_stride, strict=True))):
        needed = (needed - 1) * stride + kernel
    return needed


def standardize_input_values(input_values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(T,), (B, T) or (B, 1, T) float audio -> (B, T) in the model's dtype; anything else is refused."""
    if not isinstance(input_values, torch.Tensor):
        raise TypeError(f"`input_values` must be a torch.Tensor of float audio, got {type(input_values).__name__}")
    if not input_values.is_floating_point():
        raise TypeError(
            f"`input_values` must be float audio (samples in about [-1, 1]), got dtype {input_values.dtype}; convert "
            "integer PCM with `pcm / 32768.0` (int16) first"
        )
    shape = tuple(input_values.shape)
    if input_values.dim() == 1:
        input_values = input_values.unsqueeze(0)
    elif input_values.dim() == 3 and shape[1] == 1:
        input_values = input_values.squeeze(1)
    elif input_values.dim() != 2:
        raise ValueError(
            f"`input_values` must have shape (samples,), (batch, samples) or (batch, 1, samples) of mono audio, got "
            f"{shape}; average the channels of multi-channel audio first"
        )
    if input_values.shape[-1] == 0:
        raise ValueError(f"`input_values` has no samples (shape {shape})")
    finite = torch.isfinite(input_values).all(dim=-1)
    if not bool(finite.all()):
        rows = (~finite).nonzero().flatten().tolist()
        raise ValueError(f"`input_values` rows {rows[:10]} contain NaN or infinite samples")
    return input_values.to(dtype)


def standardize_attention_mask(
    attention_mask: torch.Tensor | None, input_values: torch.Tensor, original_shape: tuple[int, ...]
) -> torch.Tensor | None:
    """Check that the mask matches the input and describes right-padding with 0/1 (or bool) values; -> (B, T) long."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"`attention_mask` must be a torch.Tensor, got {type(attention_mask).__name__}")
    if tuple(attention_mask.shape) == tuple(original_shape):
        attention_mask = attention_mask.reshape(input_values.shape)
    if attention_mask.shape != input_values.shape:
        raise ValueError(
            f"`attention_mask` has shape {tuple(attention_mask.shape)}; it must match `input_values` "
            f"{tuple(original_shape)}: one 0/1 entry per sample"
        )
    if attention_mask.dtype != torch.bool and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("`attention_mask` must hold only 0 and 1 (1 = real sample, 0 = padding), or be bool")
    mask = attention_mask.to(torch.long)
    lengths = mask.sum(dim=-1)
    positions = torch.arange(mask.shape[-1], device=mask.device)
    prefix = (positions.unsqueeze(0) < lengths.unsqueeze(1)).long()
    not_right_padded = (mask != prefix).any(dim=-1)
    if bool(not_right_padded.any()):
        rows = not_right_padded.nonzero().flatten().tolist()
        raise ValueError(
            f"`attention_mask` rows {rows[:10]} are not right-padded: each row must be 1s (real samples) followed by "
            "0s (padding), as the feature extractor pads"
        )
    return mask


def padded_lengths(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B,) real samples per clip when at least one clip of the batch is padded; None when none is (the backbone's
    padding-aware modules then run their original, unmasked code)."""
    if attention_mask is None:
        return None
    lengths = attention_mask.sum(dim=-1)
    return None if bool((lengths == attention_mask.shape[-1]).all()) else lengths


def check_clip_lengths(
    input_values: torch.Tensor, attention_mask: torch.Tensor | None, minimum_samples: int, sampling_rate: int
) -> None:
    """Every clip needs at least one frame of the feature encoder; a shorter one would have no frame of its own."""
    if attention_mask is None:
        lengths = torch.full((input_values.shape[0],), input_values.shape[-1])
    else:
        lengths = attention_mask.sum(dim=-1)
    too_short = lengths < minimum_samples
    if bool(too_short.any()):
        rows = too_short.nonzero().flatten().tolist()
        shortest = int(lengths[too_short].min())
        raise ValueError(
            f"Clip(s) {rows[:10]} have {shortest} real samples; the backbone's feature encoder needs at least "
            f"{minimum_samples} samples ({1000 * minimum_samples / sampling_rate:g} ms at {sampling_rate} Hz) per "
            "clip. Pad or drop shorter clips."
        )
