"""Top-k routing over LoRA experts, the record of one router's decisions, and the routers' auxiliary losses.

Routers run in float32 whatever the model dtype: softmax over a handful of logits in bf16 flips top-k choices.
Shapes: B batch, T frames, D hidden size, E experts, k top-k, S routing decisions per clip (T for token
routing, 1 for utterance routing).
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .heads import masked_mean


@dataclass
class RouterOutput:
    """One router's decisions for one forward pass."""

    logits: torch.Tensor  # (B, S, E) float32
    probs: torch.Tensor  # (B, S, E) float32, softmax of logits
    top_k_indices: torch.Tensor  # (B, S, k) int64, selected experts
    top_k_weights: torch.Tensor  # (B, S, k) float32, gate of each selected expert
    mask: torch.Tensor | None  # (B, S) bool, True where the decision covers real audio (not padding)
    # Per-call cache of `rank_gates`: every expert layer a block router feeds asks for the same expansion.
    _rank_gates: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def dense_gates(self) -> torch.Tensor:
        """(B, S, E) gates: the top-k weights scattered into place, exact zeros elsewhere."""
        gates = torch.zeros_like(self.probs)
        return gates.scatter(-1, self.top_k_indices, self.top_k_weights)

    def rank_gates(self, rank: int, dtype: torch.dtype) -> torch.Tensor:
        """Each gate repeated once per LoRA rank row, in `dtype`: (B, 1, k*r) for utterance routing (the selected
        experts' gates), (B, S, E*r) for token routing (dense, zeros for unselected experts).

        Computed once per router and forward pass, not once per expert layer (six layers read one block router).
        """
        key = (rank, dtype)
        if key not in self._rank_gates:
            gates = self.top_k_weights if self.top_k_indices.shape[1] == 1 else self.dense_gates()
            self._rank_gates[key] = gates.to(dtype).repeat_interleave(rank, dim=-1)
        return self._rank_gates[key]


class TopKRouter(nn.Module):
    """A linear gate `D -> E` with float32 softmax and top-k selection.

    The gate rows are stored per expert pack (`weight.0`, `weight.1`, ...) so that rows of frozen packs stay out of
    the optimizer when a new pack is added for domain adaptation.
    """

    def __init__(
        self,
        hidden_size: int,
        pack_sizes: list[int],
        top_k: int,
        granularity: str = "utterance",
        noise_std: float = 0.0,
        normalize_top_k: bool = True,
        expert_dropout: float = 0.0,
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.top_k = top_k
        self.granularity = granularity
        self.noise_std = noise_std
        self.normalize_top_k = normalize_top_k
        self.expert_dropout = expert_dropout
        self.weight = nn.ParameterList([nn.Parameter(torch.empty(size, hidden_size)) for size in pack_sizes])

    @property
    def num_experts(self) -> int:
        return sum(w.shape[0] for w in self.weight)

    def full_weight(self) -> torch.Tensor:
        """(E, D) gate weights of all packs, in router column order."""
        if len(self.weight) == 1:
            return self.weight[0]
        return torch.cat(list(self.weight), dim=0)

    def add_pack(self, size: int, rows: torch.Tensor | None = None) -> None:
        """Append `size` gate rows (zeros unless given) for a new expert pack."""
        reference = self.weight[0]
        new = torch.zeros(size, self.hidden_size, device=reference.device, dtype=reference.dtype)
        if rows is not None:
            new.copy_(rows)
        self.weight.append(nn.Parameter(new))

    def forward(
        self,
        hidden_states: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        expert_mask: torch.Tensor | None = None,
    ) -> RouterOutput:
        # hidden_states: (B, T, D); frame_mask: (B, T) bool or None; expert_mask: (E,) bool, False = never chosen
        features = hidden_states.float()
        mask = frame_mask
        if self.granularity == "utterance":
            features = masked_mean(features, frame_mask).unsqueeze(1)  # (B, 1, D)
            mask = None
        logits = F.linear(features, self.full_weight().float())  # (B, S, E)
        if self.training and self.noise_std > 0:
            logits = logits + torch.randn_like(logits) * self.noise_std
        if expert_mask is not None:
            logits = logits.masked_fill(~expert_mask.to(logits.device), float("-inf"))
        if self.training and self.expert_dropout > 0:
            logits = self._drop_experts(logits)
        probs = logits.softmax(dim=-1)  # (B, S, E)
        top_k_probs, top_k_indices = probs.topk(self.top_k, dim=-1)  # (B, S, k)
        if self.normalize_top_k and self.top_k > 1:
            top_k_probs = top_k_probs / top_k_probs.sum(dim=-1, keepdim=True)
        return RouterOutput(logits, probs, top_k_indices, top_k_probs, mask)

    def _drop_experts(self, logits: torch.Tensor) -> torch.Tensor:
        """Expert dropout: each available expert is hidden from each routing decision with probability
        `expert_dropout`, so that the router cannot lean on the same few experts (a remedy for router collapse).
        A decision that would keep fewer than k experts is left whole, so top-k never picks a hidden expert."""
        available = torch.isfinite(logits)  # (B, S, E)
        dropped = available & (torch.rand_like(logits) < self.expert_dropout)
        enough = (available & ~dropped).sum(dim=-1, keepdim=True) >= self.top_k  # (B, S, 1)
        return logits.masked_fill(dropped & enough, float("-inf"))


def _flatten_decisions(record: RouterOutput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flatten (B, S, ...) decisions to (N, ...) keeping only real ones; returns logits, probs, top-k indices."""
    num_experts = record.logits.shape[-1]
    logits = record.logits.reshape(-1, num_experts)
    probs = record.probs.reshape(-1, num_experts)
    indices = record.top_k_indices.reshape(-1, record.top_k_indices.shape[-1])
    if record.mask is not None:
        keep = record.mask.reshape(-1)
        logits, probs, indices = logits[keep], probs[keep], indices[keep]
    return logits, probs, indices


def load_balancing_loss(records: list[RouterOutput]) -> torch.Tensor:
    """Switch/Mixtral load balancing, averaged over routers: `E * sum_e f_e * P_e`.

    `f_e` is the fraction of real routing decisions that selected expert e (divided by k so it sums to 1) and
    `P_e` the mean router probability of e. It equals 1 for perfectly uniform routing. Its gradient also lifts the
    logits of experts that are never selected, which is what brings freshly added experts into use.
    """
    losses = []
    for record in records:
        _, probs, indices = _flatten_decisions(record)
        if probs.shape[0] == 0:
            continue
        num_experts, top_k = probs.shape[-1], indices.shape[-1]
        selected = F.one_hot(indices, num_experts).sum(dim=1).float()  # (N, E)
        fraction = selected.mean(dim=0) / top_k  # (E,)
        mean_prob = probs.mean(dim=0)  # (E,)
        losses.append(num_experts * (fraction * mean_prob).sum())
    return torch.stack(losses).mean() if losses else _zero(records)


def router_z_loss(records: list[RouterOutput]) -> torch.Tensor:
    """ST-MoE z-loss, averaged over routers: mean squared log-sum-exp of the router logits."""
    losses = []
    for record in records:
        logits, _, _ = _flatten_decisions(record)
        if logits.shape[0] == 0:
            continue
        losses.append(torch.logsumexp(logits, dim=-1).pow(2).mean())
    return torch.stack(losses).mean() if losses else _zero(records)


def expert_orthogonality_loss(lora_a: torch.Tensor) -> torch.Tensor:
    """Push the experts of one layer towards mutually orthogonal input subspaces.

    lora_a: (E, r, d_in). Rows are L2-normalised; the loss is the mean squared cosine between a row of one expert
    and a row of another expert (within-expert pairs are left alone). 0 means the experts read disjoint directions.
    """
    num_experts, rank, d_in = lora_a.shape
    if num_experts < 2:
        return lora_a.new_zeros((), dtype=torch.float32)
    rows = F.normalize(lora_a.float(), dim=-1)  # (E, r, d_in), unit rows
    # Sum of squared cosines over all row pairs = ||R R^T||_F^2 = ||R^T R||_F^2: take the smaller Gram matrix, so the
    # cost stops growing with E^2 once E*r > d_in; then drop the within-expert pairs ((E, r, r) blocks).
    flat = rows.reshape(num_experts * rank, d_in)
    gram = flat @ flat.T if num_experts * rank <= d_in else flat.T @ flat  # (E*r, E*r) or (d_in, d_in)
    within = torch.bmm(rows, rows.transpose(1, 2)).pow(2).sum()
    across_pairs = (num_experts * rank) ** 2 - num_experts * rank**2
    return (gram.pow(2).sum() - within) / across_pairs


def _zero(records: list[RouterOutput]) -> torch.Tensor:
    device = records[0].logits.device if records else None
    return torch.zeros((), device=device)
