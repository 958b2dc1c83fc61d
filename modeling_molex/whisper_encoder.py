"""Whisper's encoder as a MoLEx backbone: 16 kHz waveforms in, any length up to 30 s, batch-invariant.

MoLEx models take waveforms (`input_values`) whatever the backbone, so that scoring, the pipeline, the CLI, the
demo and training stay one path. `WhisperWaveformEncoder` therefore runs Whisper's log-mel front end itself, in
torch, equal to `WhisperFeatureExtractor` on the same audio (Hann window n_fft 400, hop 160, slaney mel bank of
`config.num_mel_bins` bins up to 8 kHz, power, log10 floored at 1e-10, clamped at the clip's max - 8, (x + 4) / 4),
then the encoder's own modules (conv1, conv2, the first T rows of `embed_positions`, the blocks, the final layer
norm). The blocks stay in `encoder.layers`, so experts are injected there as for the SSL families.

Why not `WhisperEncoder.forward`: it refuses anything but exactly 3,000 mel frames (30 s). Padding a 2 s crop to
30 s costs ~15x the compute and changes the result, because Whisper's encoder attends to the padding. Here the
positions are sliced instead: they are sinusoidal, so the first T rows are exactly what a 30 s input has there.

The relation between a 2 s crop (32,000 samples) and the same audio zero-padded to 30 s, as Whisper's feature
extractor does (tested in tests/test_whisper_backbone.py):
- log-mel: frames 0-198 of the crop's 200 are equal. Frame j is centred on sample 160 j and spans +-200 samples;
  the crop's last frame (199) reaches 40 samples past its end, where torch's centre padding reflects the crop's own
  samples but the 30 s input has zeros. (Equal also needs the per-clip max, over which the clamp at max - 8 runs,
  to lie in frames both share; the 30 s input's max also sees frames 200-201, which still hold some crop samples.)
- encoder outputs on the crop's 100 frames differ: every block attends to the 1,400 frames of padding as well
  (and the convolutions see different neighbours at the boundary). They are similar, not equal.

Level: Whisper's log-mel follows the input's gain (a gain g adds 2 log10 g to every value), and so do the scores.
With `MoLExConfig.log_mel_level` set, each clip's log-mel is shifted so that its maximum is that value before the
clamp at max - 8; the model then scores a clip the same at any gain (down to where the 1e-10 floor is reached).

Batches: with an `attention_mask` (0/1 right padding, in samples) each clip is processed as if alone: its centre
padding reflects its own samples, the max of the clamp is taken over its own frames, log-mel and conv1 outputs past
its end are zeroed (what the convolutions' zero padding gives the clip alone), and padded encoder frames are masked
out of attention as keys. A clip scores the same alone and padded inside a batch.
"""

import numpy as np
import torch
from torch import nn
from transformers import WhisperConfig
from transformers import initialization as init
from transformers.audio_utils import mel_filter_bank
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.whisper.modeling_whisper import WhisperAttention, WhisperEncoder, WhisperPreTrainedModel
from transformers.utils.output_capturing import capture_outputs


# Whisper's front end is fixed by how the checkpoints were trained (`WhisperFeatureExtractor` defaults); the
# WhisperConfig does not carry it, only `num_mel_bins`.
SAMPLING_RATE = 16_000
N_FFT = 400  # 25 ms window
HOP_LENGTH = 160  # 10 ms hop: 100 mel frames per second
MEL_MAX_FREQUENCY = 8_000.0
LOG_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0  # log10 units below the clip's max that are kept
CONV2_STRIDE = 2  # 100 mel frames -> 50 encoder frames per second
# torch's centre padding reflects n_fft // 2 samples at each end, which needs more samples than that; 201 samples
# give one mel frame and so one encoder frame.
MINIMUM_INPUT_SAMPLES = N_FFT // 2 + 1


def whisper_mel_filters(num_mel_bins: int) -> torch.Tensor:
    """(num_mel_bins, n_fft // 2 + 1) float32 slaney mel bank, exactly `WhisperFeatureExtractor.mel_filters.T`."""
    bank = mel_filter_bank(
        num_frequency_bins=1 + N_FFT // 2,
        num_mel_filters=num_mel_bins,
        min_frequency=0.0,
        max_frequency=MEL_MAX_FREQUENCY,
        sampling_rate=SAMPLING_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(np.ascontiguousarray(bank.T, dtype=np.float32))


def mel_frame_counts(num_samples: torch.Tensor | int) -> torch.Tensor | int:
    """Mel frames of a clip: torch.stft gives samples // hop + 1 centred frames, Whisper drops the last one."""
    return num_samples // HOP_LENGTH


def encoder_frame_counts(num_samples: torch.Tensor | int) -> torch.Tensor | int:
    """Encoder frames of a clip: conv2 (kernel 3, stride 2, padding 1) halves the mel frames, rounding up."""
    return (mel_frame_counts(num_samples) - 1) // CONV2_STRIDE + 1


def _prefix_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) lengths -> (B, size) bool, True on the first `length` positions."""
    return torch.arange(size, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


class WhisperLogMelSpectrogram(nn.Module):
    """Waveforms -> Whisper's normalised log-mel spectrogram, each clip over its own samples only.

    The window and mel bank are deterministic non-persistent buffers (nothing is stored in checkpoints);
    `reset_buffers` rebuilds them after transformers' meta-device loading, which leaves such buffers empty."""

    def __init__(self, num_mel_bins: int):
        super().__init__()
        self.num_mel_bins = num_mel_bins
        self.level: float | None = None  # set from `MoLExConfig.log_mel_level`; None = Whisper's own front end
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)  # periodic, as the extractor's
        self.register_buffer("mel_filters", whisper_mel_filters(num_mel_bins), persistent=False)

    @torch.no_grad()
    def reset_buffers(self) -> None:
        init.copy_(self.window, torch.hann_window(N_FFT))
        init.copy_(self.mel_filters, whisper_mel_filters(self.num_mel_bins))

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waves: (B, L) float audio; lengths: (B,) real samples per clip (right padding after them).
        Returns the log-mel (B, num_mel_bins, L // 160) in float32, zero on frames past a clip's end, and the
        frame mask (B, L // 160) bool."""
        waves = waves.float()
        batch, num_samples = waves.shape
        pad = N_FFT // 2
        # Centre padding by reflection about each clip's own last sample (torch.stft's "reflect" for a clip alone).
        positions = torch.arange(-pad, num_samples + pad, device=waves.device).abs().unsqueeze(0)  # (1, L + 2 pad)
        last = (lengths - 1).unsqueeze(1)  # (B, 1)
        source = torch.where(positions > last, 2 * last - positions, positions).clamp(0, num_samples - 1)
        padded = waves.gather(1, source)  # (B, L + 2 pad); past a clip's reflection: any sample, masked below
        window = self.window.float()
        spectrum = torch.stft(padded, N_FFT, HOP_LENGTH, window=window, center=False, return_complex=True)
        power = (spectrum[..., :-1].abs() ** 2).contiguous()  # (B, n_fft // 2 + 1, M)
        log_mel = (self.mel_filters.float() @ power).clamp(min=LOG_FLOOR).log10()  # (B, n_mels, M)
        frame_mask = _prefix_mask(mel_frame_counts(lengths), log_mel.shape[-1])  # (B, M)
        valid = frame_mask.unsqueeze(1)  # (B, 1, M)
        clip_max = log_mel.masked_fill(~valid, float("-inf")).amax(dim=(1, 2), keepdim=True)  # (B, 1, 1)
        if self.level is not None:  # a gain g adds 2 log10 g everywhere: bring each clip's max to the same level
            log_mel, clip_max = log_mel - clip_max + self.level, torch.full_like(clip_max, self.level)
        log_mel = (torch.maximum(log_mel, clip_max - DYNAMIC_RANGE) + 4.0) / 4.0
        return log_mel.masked_fill(~valid, 0.0), frame_mask


class WhisperWaveformEncoder(WhisperPreTrainedModel):
    """Whisper's encoder on 16 kHz waveforms of any length up to `max_source_positions` encoder frames (30 s); see
    the module docstring. State-dict keys are `encoder.*`, as in `WhisperModel`, so Whisper checkpoints
    (`WhisperModel`'s `encoder.*` or `WhisperForConditionalGeneration`'s `model.encoder.*`) load with
    `from_pretrained`; the decoder's weights are ignored."""

    main_input_name = "input_values"
    input_modalities = ("audio",)
    _keys_to_ignore_on_load_unexpected = [r"decoder\.", r"proj_out\."]
    _can_record_outputs = {"attentions": WhisperAttention}  # hidden states are collected by `forward` itself

    def __init__(self, config: WhisperConfig):
        super().__init__(config)
        self.log_mel = WhisperLogMelSpectrogram(config.num_mel_bins)
        self.encoder = WhisperEncoder(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, WhisperLogMelSpectrogram):
            module.reset_buffers()
        else:
            super()._init_weights(module)

    def _get_feat_extract_output_lengths(self, num_samples: torch.Tensor | int) -> torch.Tensor | int:
        """Encoder frames for clips of `num_samples` samples (unlike WhisperPreTrainedModel's, which counts mel frames:
        this model's input is the waveform)."""
        return encoder_frame_counts(num_samples)

    def _get_feature_vector_attention_mask(self, num_frames: int, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, samples) 0/1 right-padding mask -> (B, num_frames) bool, True on each clip's own encoder frames."""
        return _prefix_mask(encoder_frame_counts(attention_mask.sum(dim=-1)), num_frames)

    @capture_outputs
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        """input_values: (B, samples) 16 kHz audio; attention_mask: (B, samples), 1 = real sample, 0 = right padding.
        `hidden_states` (with `output_hidden_states`): the blocks' input and every block's output, the last one after
        the final layer norm (= `last_hidden_state`), as `WhisperEncoder` returns them; (B, T, d_model) each."""
        encoder = self.encoder
        batch, num_samples = input_values.shape
        if attention_mask is None:
            lengths = torch.full((batch,), num_samples, device=input_values.device)
        else:
            lengths = attention_mask.sum(dim=-1)
        if int(lengths.min()) < MINIMUM_INPUT_SAMPLES:
            raise ValueError(f"Whisper's front end needs at least {MINIMUM_INPUT_SAMPLES} samples per clip")
        num_frames = encoder_frame_counts(num_samples)
        if num_frames > encoder.embed_positions.num_embeddings:
            raise ValueError(
                f"Clips of {num_samples} samples give {num_frames} encoder frames; Whisper's `max_source_positions` is "
                f"{encoder.embed_positions.num_embeddings} ({encoder.embed_positions.num_embeddings * 2 * HOP_LENGTH} "
                "samples). Score longer audio in windows (score_waveform does)."
            )
        padded = attention_mask is not None and bool((lengths < num_samples).any())
        log_mel, mel_mask = self.log_mel(input_values, lengths)  # (B, n_mels, M), (B, M)
        hidden = nn.functional.gelu(encoder.conv1(log_mel.to(encoder.conv1.weight.dtype)))  # (B, D, M)
        if padded:  # conv2 of the clip alone sees zero padding past its last conv1 frame
            hidden = hidden * mel_mask.unsqueeze(1).to(hidden.dtype)
        hidden = nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)  # (B, T, D)
        hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
        hidden = nn.functional.dropout(hidden, p=encoder.dropout, training=self.training)
        key_mask = None
        if padded:
            frame_mask = self._get_feature_vector_attention_mask(hidden.shape[1], attention_mask)  # (B, T)
            key_mask = torch.zeros(frame_mask.shape, dtype=hidden.dtype, device=hidden.device)
            key_mask = key_mask.masked_fill(~frame_mask, torch.finfo(hidden.dtype).min)[:, None, None, :]
        states = [hidden]
        for layer in encoder.layers:
            hidden = layer(hidden, key_mask)  # (B, T, D); key_mask: (B, 1, 1, T) additive, or None
            states.append(hidden)
        hidden = encoder.layer_norm(hidden)
        states[-1] = hidden
        return BaseModelOutput(last_hidden_state=hidden, hidden_states=tuple(states) if output_hidden_states else None)
