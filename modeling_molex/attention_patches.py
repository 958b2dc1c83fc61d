"""Make transformers' WavLM attention call its projection modules, so that experts on q/k/v/out_proj take effect.

`WavLMAttention.torch_multi_head_self_attention` hands `self.q_proj.weight` (and k, v, out) straight to
`F.multi_head_attention_forward`, so any wrapper around those `nn.Linear`s (PEFT LoRA or MoLEx experts) is silently
bypassed: no effect, no gradient. We swap the class of each WavLM attention module for a subclass that computes the
same attention (same scaling, gated relative position bias, key padding mask and dropout) through the modules.
"""

import torch
import torch.nn.functional as F
from torch import nn


def _module_calling_self_attention(
    self: nn.Module,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    gated_position_bias: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    # hidden_states: (B, T, D); gated_position_bias: (B*H, T, T); attention_mask: (B, T), 1 = real frame
    batch, frames, _ = hidden_states.shape
    heads, head_dim = self.num_heads, self.head_dim

    def split_heads(states: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B*H, T, hd)
        return states.view(batch, frames, heads, head_dim).transpose(1, 2).reshape(batch * heads, frames, head_dim)

    query = split_heads(self.q_proj(hidden_states)) * self.scaling
    key = split_heads(self.k_proj(hidden_states))
    value = split_heads(self.v_proj(hidden_states))
    scores = torch.baddbmm(gated_position_bias.to(query.dtype), query, key.transpose(1, 2))  # (B*H, T, T)
    if attention_mask is not None:
        padding = attention_mask.ne(1).view(batch, 1, 1, frames)
        scores = scores.view(batch, heads, frames, frames).masked_fill(padding, float("-inf"))
        scores = scores.view(batch * heads, frames, frames)
    weights = F.dropout(scores.softmax(dim=-1), p=self.dropout, training=self.training)
    context = torch.bmm(weights, value)  # (B*H, T, hd)
    context = context.view(batch, heads, frames, head_dim).transpose(1, 2).reshape(batch, frames, heads * head_dim)
    return self.out_proj(context), weights.view(batch, heads, frames, frames)


_PATCHED_CLASSES: dict[type, type] = {}


def make_wavlm_attention_use_modules(backbone: nn.Module) -> int:
    """Patch every WavLM attention module of `backbone` in place; returns how many were patched."""
    patched = 0
    for module in backbone.modules():
        cls = type(module)
        if cls.__name__ != "WavLMAttention" or not hasattr(module, "torch_multi_head_self_attention"):
            continue
        if cls not in _PATCHED_CLASSES:
            _PATCHED_CLASSES[cls] = type(
                "MoLExWavLMAttention",
                (cls,),
                {
                    "torch_multi_head_self_attention": _module_calling_self_attention,
                    "__doc__": "WavLM attention that calls q/k/v/out_proj as modules (see attention_patches.py).",
                },
            )
        module.__class__ = _PATCHED_CLASSES[cls]
        patched += 1
    return patched
