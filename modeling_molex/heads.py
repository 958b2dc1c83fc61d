"""The back-end: weighted sum of SSL hidden states, masked pooling over frames, and a small MLP classifier."""

import torch
from torch import nn


class WeightedLayerSum(nn.Module):
    """softmax(w) . [h_0, ..., h_L]: lets the classifier read the lower SSL layers where spoofing cues live."""

    def __init__(self, num_states: int):
        super().__init__()
        self.layer_weights = nn.Parameter(torch.zeros(num_states))

    def forward(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        stacked = torch.stack(hidden_states, dim=0)  # (L+1, B, T, D)
        weights = self.layer_weights.softmax(dim=0).to(stacked.dtype)  # (L+1,)
        return torch.einsum("l,lbtd->btd", weights, stacked)  # (B, T, D)


def masked_mean(hidden: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T, D) -> (B, D), averaging real frames only (frame_mask: (B, T) bool, True = real)."""
    if frame_mask is None:
        return hidden.mean(dim=1)
    weights = frame_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class MeanPooling(nn.Module):
    """Masked mean over real frames."""

    output_multiplier = 1

    def forward(self, hidden: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        return masked_mean(hidden, frame_mask)


class AttentiveStatisticsPooling(nn.Module):
    """Attentive statistics pooling (Okabe et al., 2018): attention-weighted mean and std over real frames."""

    output_multiplier = 2

    def __init__(self, hidden_size: int, attention_hidden_size: int):
        super().__init__()
        self.attention = nn.Sequential(
            nn.Linear(hidden_size, attention_hidden_size), nn.Tanh(), nn.Linear(attention_hidden_size, 1)
        )

    def forward(self, hidden: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        # hidden: (B, T, D); frame_mask: (B, T) bool -> (B, 2D)
        scores = self.attention(hidden).squeeze(-1).float()  # (B, T)
        if frame_mask is not None:
            scores = scores.masked_fill(~frame_mask, float("-inf"))
        weights = scores.softmax(dim=-1).unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        mean = (weights * hidden).sum(dim=1)  # (B, D)
        variance = (weights * hidden.pow(2)).sum(dim=1) - mean.pow(2)
        std = variance.float().clamp(min=1e-6).sqrt().to(hidden.dtype)
        return torch.cat([mean, std], dim=-1)


class ClassificationHead(nn.Module):
    """dropout -> Linear -> GELU -> dropout -> Linear(num_labels)."""

    def __init__(self, input_size: int, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(input_size, hidden_size)
        self.activation = nn.GELU()
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        hidden = self.activation(self.dense(self.dropout(pooled)))
        return self.out_proj(self.dropout(hidden))
