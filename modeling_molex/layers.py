"""`MoLExLinear`: a frozen `nn.Linear` plus a stack of LoRA experts mixed by router gates.

    y = base(x) + (lora_alpha / r) * sum_e gate_e * B_e @ A_e @ dropout(x)

All experts of a layer live in two stacked tensors per pack (A: (E, r, d_in), B: (E, r, d_out)), so the mixture is
two batched matmuls, never a Python loop over experts. With utterance routing only the k selected experts are
gathered and computed; with token routing every expert is computed and unselected ones get an exact zero gate.
"""

import torch
from torch import nn
from transformers import initialization as init

from .router import RouterOutput, TopKRouter
from .routing_state import current_routing_state, experts_are_disabled


class MoLExLinear(nn.Module):
    """Wraps `base_layer` (kept as a submodule, like peft's LoRA layers) and adds E LoRA experts.

    Args:
        base_layer: the frozen linear layer of the backbone.
        pack_sizes: experts per pack; each pack is one pair of stacked parameters (`lora_A.<i>`, `lora_B.<i>`).
        r, lora_alpha, lora_dropout: as in PEFT LoRA.
        router_name: key of the router output this layer uses in the call's routing state (`routing_state.py`).
        router: the layer's own router (`router_scope="module"`); `None` when the block router decides.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        pack_sizes: list[int],
        r: int,
        lora_alpha: float,
        lora_dropout: float,
        router_name: str,
        router: TopKRouter | None = None,
    ):
        super().__init__()
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.r = r
        self.scaling = lora_alpha / r
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.lora_A = nn.ParameterList([nn.Parameter(torch.empty(n, r, self.in_features)) for n in pack_sizes])
        self.lora_B = nn.ParameterList([nn.Parameter(torch.empty(n, r, self.out_features)) for n in pack_sizes])
        self.router = router
        self.router_name = router_name

    # Code that reads `module.weight` directly (WavLM attention, merging tools) still sees the frozen weight.
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def num_experts(self) -> int:
        return sum(a.shape[0] for a in self.lora_A)

    def stacked_lora_a(self) -> torch.Tensor:
        """(E, r, d_in) A matrices of all packs, in router column order."""
        return self.lora_A[0] if len(self.lora_A) == 1 else torch.cat(list(self.lora_A), dim=0)

    def stacked_lora_b(self) -> torch.Tensor:
        """(E, r, d_out) B matrices (transposed w.r.t. PEFT's `lora_B.weight`) of all packs."""
        return self.lora_B[0] if len(self.lora_B) == 1 else torch.cat(list(self.lora_B), dim=0)

    @torch.no_grad()
    def reset_expert_parameters(self, pack_index: int | None = None) -> None:
        """PEFT's default LoRA init: A ~ U(+-1/sqrt(d_in)) (kaiming-uniform, a=sqrt(5)), B = 0 (zero delta)."""
        packs = range(len(self.lora_A)) if pack_index is None else [pack_index]
        bound = self.in_features**-0.5
        for i in packs:
            # `transformers.initialization` skips tensors already loaded from a checkpoint.
            init.uniform_(self.lora_A[i], -bound, bound)
            init.zeros_(self.lora_B[i])

    def add_pack(self, size: int) -> None:
        """Append `size` new experts (zero delta) as a new trainable pack."""
        reference = self.lora_A[0]
        factory = {"device": reference.device, "dtype": reference.dtype}
        self.lora_A.append(nn.Parameter(torch.empty(size, self.r, self.in_features, **factory)))
        self.lora_B.append(nn.Parameter(torch.empty(size, self.r, self.out_features, **factory)))
        self.reset_expert_parameters(len(self.lora_A) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if experts_are_disabled():
            return result
        return self.mixture_delta(x, self._routing(x), add_to=result)

    def _routing(self, x: torch.Tensor) -> RouterOutput:
        state = current_routing_state()
        if self.router is not None:
            routing = self.router(x, state.frame_mask, state.expert_mask)
            state.records[self.router_name] = routing
            return routing
        routing = state.records.get(self.router_name)
        if routing is None:
            raise RuntimeError(
                f"MoLExLinear: no routing decision {self.router_name!r} for this forward pass. Call the backbone "
                "through MoLExForAudioClassification (its block routers run as forward pre-hooks)."
            )
        return routing

    def mixture_delta(
        self, x: torch.Tensor, routing: RouterOutput, add_to: torch.Tensor | None = None
    ) -> torch.Tensor:
        """scaling * sum over selected experts of gate * B A x, for x: (B, T, d_in) -> (B, T, d_out).

        With `add_to` (the base output, a fresh tensor) the sum is accumulated into it, in place, by the second
        matmul itself (baddbmm_ / addmm_), which saves two full passes over the (B, T, d_out) output per layer;
        `add_to` is returned.
        """
        if x.dim() != 3:
            raise ValueError(f"MoLExLinear expects (batch, frames, features) input, got shape {tuple(x.shape)}")
        x = self.lora_dropout(x)
        lora_a = self.stacked_lora_a().to(x.dtype)  # (E, r, d_in); `.to` is a no-op unless autocast/half
        lora_b = self.stacked_lora_b().to(x.dtype)  # (E, r, d_out)
        batch, frames, _ = x.shape
        num_experts, rank, d_in = lora_a.shape
        d_out = lora_b.shape[-1]
        if routing.top_k_indices.shape[1] == 1:
            # Utterance routing: gather the k chosen experts of each clip (one index_select per matrix) and run
            # only them. The gates scale the narrow (B, T, k*r) hidden, the cheapest place for them.
            selected = routing.top_k_indices.reshape(-1)  # (B*k,)
            top_k = selected.shape[0] // batch
            selected_a = lora_a.reshape(num_experts, rank * d_in).index_select(0, selected)
            selected_b = lora_b.reshape(num_experts, rank * d_out).index_select(0, selected)
            selected_a = selected_a.view(batch, top_k * rank, d_in)  # (B, k*r, d_in)
            selected_b = selected_b.view(batch, top_k * rank, d_out)  # (B, k*r, d_out)
            hidden = torch.bmm(x, selected_a.transpose(1, 2))  # (B, T, k*r); bf16 under autocast
            hidden = hidden * routing.rank_gates(rank, hidden.dtype)  # gates: (B, 1, k*r), cached per router
            if add_to is None:
                return torch.bmm(hidden, selected_b.to(hidden.dtype)) * self.scaling
            # In place into the base output: saves allocating and re-reading a (B, T, d_out) tensor. Autograd
            # allows it (neither baddbmm's nor the base linear's backward reads this tensor's values).
            out_dtype = add_to.dtype
            return add_to.baddbmm_(hidden.to(out_dtype), selected_b.to(out_dtype), alpha=self.scaling)
        # Token routing: every expert in one matmul, unselected experts multiplied by an exact 0.
        hidden = x @ lora_a.reshape(num_experts * rank, d_in).T  # (B, T, E*r)
        hidden = hidden * routing.rank_gates(rank, hidden.dtype)  # dense gates (B, T, E*r), cached per router
        hidden = hidden.reshape(batch * frames, num_experts * rank)
        flat_b = lora_b.reshape(num_experts * rank, d_out)  # (E*r, d_out)
        if add_to is None:
            return (hidden @ flat_b.to(hidden.dtype)).view(batch, frames, d_out) * self.scaling
        out_dtype = add_to.dtype
        flat_out = add_to.view(batch * frames, d_out)
        return flat_out.addmm_(hidden.to(out_dtype), flat_b.to(out_dtype), alpha=self.scaling).view_as(add_to)

    def expert_delta(self, x: torch.Tensor, expert_index: int) -> torch.Tensor:
        """What one expert alone adds at gate 1 (= a PEFT LoRA adapter with this expert's A and B)."""
        lora_a = self.stacked_lora_a()[expert_index].to(x.dtype)  # (r, d_in)
        lora_b = self.stacked_lora_b()[expert_index].to(x.dtype)  # (r, d_out)
        return (x @ lora_a.T) @ lora_b * self.scaling

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, r={self.r}, scaling={self.scaling:g}, router={self.router_name!r}"
