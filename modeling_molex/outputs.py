"""What MoLExForAudioClassification returns, and the score convention.

Score convention: `logits[:, 1] - logits[:, 0]`, higher = more bona fide (label 1 = bonafide, 0 = spoof); a
log-likelihood ratio once a calibration `{"scale", "bias"}` is applied.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from .router import RouterOutput


@dataclass
class MoLExAudioClassifierOutput(ModelOutput):
    """Output of [`MoLExForAudioClassification`].

    Args:
        loss: cross-entropy + `aux_loss`, only when `labels` are given.
        logits: (B, 2) scores for `[spoof, bonafide]`.
        aux_loss: weighted sum of the three router/expert losses below (training or when labels are given).
        load_balance_loss, orthogonality_loss, router_z_loss: the unweighted auxiliary losses.
        expert_usage: (B, R, E) share of each clip's real routing decisions that selected each expert, per router
            (R routers in `model.router_names` order). With utterance routing the entries are 0 or 1.
        router_probs: (B, R, E) mean router probability per clip and router.
        hidden_states: the backbone's hidden states when `output_hidden_states=True`.
        attentions: the backbone's attention weights when `output_attentions=True` (eager attention).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    load_balance_loss: torch.Tensor | None = None
    orthogonality_loss: torch.Tensor | None = None
    router_z_loss: torch.Tensor | None = None
    expert_usage: torch.Tensor | None = None
    router_probs: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


def detection_scores(logits: torch.Tensor, calibration: dict[str, float] | None = None) -> torch.Tensor:
    """(B, 2) logits -> (B,) scores, higher = more bona fide; an LLR when `calibration` is given."""
    return calibrate_scores(logits[..., 1].float() - logits[..., 0].float(), calibration)


def calibrate_scores(scores: torch.Tensor, calibration: dict[str, float] | None) -> torch.Tensor:
    """Raw scores -> LLRs with the stored `{"scale", "bias"}` (the only place a calibration is applied)."""
    if calibration is None:
        return scores
    return calibration["scale"] * scores + calibration["bias"]


def routing_summary(records: list[RouterOutput]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(B, R, E) expert usage and mean router probabilities per clip, detached."""
    if not records:
        return None, None
    usage, probs = [], []
    for record in records:
        num_experts = record.probs.shape[-1]
        selected = F.one_hot(record.top_k_indices, num_experts).sum(dim=-2).float()  # (B, S, E)
        weights = (
            torch.ones(selected.shape[:2], device=selected.device) if record.mask is None else record.mask.float()
        )
        weights = (weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0)).unsqueeze(-1)  # (B, S, 1)
        usage.append((selected * weights).sum(dim=1))  # (B, E)
        probs.append((record.probs * weights).sum(dim=1))
    return torch.stack(usage, dim=1).detach(), torch.stack(probs, dim=1).detach()
