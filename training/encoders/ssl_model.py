"""The pretrained encoder (a standard `Wav2Vec2Model`) plus its masked-prediction heads, and the encoder export.

Only the encoder leaves pretraining: `export_encoder` writes a folder that `AutoModel.from_pretrained` and
`MoLExForAudioClassification.from_backbone` load, with a `Wav2Vec2FeatureExtractor` beside it.
"""

import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from training.encoders.ssl_config import SSLPretrainConfig


def encoder_config(config: SSLPretrainConfig) -> Wav2Vec2Config:
    """A stable-layer-norm wav2vec2 (like XLS-R) with a layer-normed, trained CNN; masking is driven by the loop."""
    return Wav2Vec2Config(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        conv_dim=list(config.conv_dim),
        conv_kernel=list(config.conv_kernel),
        conv_stride=list(config.conv_stride),
        conv_bias=True,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=config.num_conv_pos_embeddings,
        num_conv_pos_embedding_groups=config.num_conv_pos_embedding_groups,
        hidden_dropout=config.dropout,
        attention_dropout=config.dropout,
        activation_dropout=config.dropout,
        feat_proj_dropout=config.dropout,
        layerdrop=0.0,
        apply_spec_augment=True,  # needed for mask_time_indices to take effect
        mask_time_prob=0.05,  # fine-tuning default; pretraining passes its own mask indices
        vocab_size=2,
        bos_token_id=None,  # no CTC vocabulary, no tokens: wav2vec2's defaults (eos 2) fall outside vocab_size=2
        eos_token_id=None,
        pad_token_id=None,
    )


class MaskedPredictionModel(nn.Module):
    """Encoder + one linear head per codebook; cross-entropy on masked, non-padded frames only (HuBERT, alpha = 1)."""

    def __init__(self, config: Wav2Vec2Config, codebook_sizes: list[int]):
        super().__init__()
        self.encoder = Wav2Vec2Model(config)
        self.heads = nn.ModuleList(nn.Linear(config.hidden_size, size) for size in codebook_sizes)

    def num_frames(self, num_samples: int | torch.Tensor) -> int | torch.Tensor:
        return self.encoder._get_feat_extract_output_lengths(num_samples)

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor,
        mask_time_indices: torch.Tensor,
        frame_mask: torch.Tensor,
        targets: list[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        hidden = self.encoder(
            input_values, attention_mask=attention_mask, mask_time_indices=mask_time_indices
        ).last_hidden_state
        masked = mask_time_indices & frame_mask
        unmasked = ~mask_time_indices & frame_mask
        loss = hidden.new_zeros(())
        out = {}
        for index, (head, target) in enumerate(zip(self.heads, targets, strict=True)):
            logits = head(hidden)
            loss = loss + nn.functional.cross_entropy(logits[masked], target[masked])
            predicted = logits.argmax(-1)
            out[f"masked_acc_{index}"] = (predicted[masked] == target[masked]).float().mean().detach()
            out[f"unmasked_acc_{index}"] = (predicted[unmasked] == target[unmasked]).float().mean().detach()
        out["loss"] = loss / len(self.heads)
        return out


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def export_encoder(encoder: Wav2Vec2Model, folder: str | Path, extra_files: dict[str, str] | None = None) -> Path:
    """Write encoder (safetensors) + feature extractor into `folder` atomically (staged, then renamed)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        encoder.save_pretrained(staging, safe_serialization=True)
        Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True, return_attention_mask=True
        ).save_pretrained(staging)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        for path in [staging, *staging.iterdir()]:  # mkdtemp makes a private folder: publish it like any output
            path.chmod(0o755 if path.is_dir() else 0o644)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
