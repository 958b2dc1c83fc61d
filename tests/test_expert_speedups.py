"""The speed-ups of issue 12 change how the expert mixture and the auxiliary losses are computed, never what they
compute: outputs and gradients equal a plain per-clip, per-expert reference loop and the previous implementation."""

import pytest
import torch
from conftest import randomize_experts, tiny_backbone_config

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification
from modeling_molex.layers import MoLExLinear
from modeling_molex.router import RouterOutput, expert_orthogonality_loss


def previous_mixture_delta(layer: MoLExLinear, x, routing: RouterOutput, add_to=None):
    """The implementation before issue 12 (gather by advanced indexing, gates on A, out-of-place accumulation)."""
    lora_a, lora_b = layer.stacked_lora_a().to(x.dtype), layer.stacked_lora_b().to(x.dtype)
    batch, frames, _ = x.shape
    num_experts, rank, _ = lora_a.shape
    if routing.top_k_indices.shape[1] == 1:
        indices = routing.top_k_indices[:, 0]
        top_k = indices.shape[-1]
        gates = routing.top_k_weights[:, 0].to(x.dtype).repeat_interleave(rank, dim=-1)
        selected_a = lora_a[indices].reshape(batch, top_k * rank, -1) * gates.unsqueeze(-1)
        selected_b = lora_b[indices].reshape(batch, top_k * rank, -1)
        hidden = torch.bmm(x, selected_a.transpose(1, 2))
        if add_to is None:
            return torch.bmm(hidden, selected_b) * layer.scaling
        return torch.baddbmm(add_to, hidden, selected_b, alpha=layer.scaling)
    gates = routing.dense_gates().to(x.dtype).repeat_interleave(rank, dim=-1)
    hidden = (x @ lora_a.reshape(num_experts * rank, -1).T) * gates
    hidden = hidden.reshape(batch * frames, num_experts * rank)
    flat_b = lora_b.reshape(num_experts * rank, -1)
    if add_to is None:
        return (hidden @ flat_b).view(batch, frames, -1) * layer.scaling
    return torch.addmm(add_to.reshape(batch * frames, -1), hidden, flat_b, alpha=layer.scaling).view_as(add_to)


def reference_loop_delta(layer: MoLExLinear, x, routing: RouterOutput):
    """Per clip, per decision, per selected expert: gate * scaling * (x A^T) B. Slow and obviously right."""
    lora_a, lora_b = layer.stacked_lora_a(), layer.stacked_lora_b()
    out = torch.zeros(*x.shape[:2], lora_b.shape[-1])
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            s = 0 if routing.top_k_indices.shape[1] == 1 else t
            for gate, e in zip(routing.top_k_weights[b, s], routing.top_k_indices[b, s], strict=True):
                out[b, t] += gate * layer.scaling * (x[b, t] @ lora_a[e].T) @ lora_b[e]
    return out


def make_layer_and_routing(granularity: str, num_experts=6, top_k=2, rank=4, d_in=12, d_out=20, batch=3, frames=5):
    torch.manual_seed(0)
    layer = MoLExLinear(torch.nn.Linear(d_in, d_out), [num_experts - 2, 2], rank, 2 * rank, 0.0, "layer_0")
    with torch.no_grad():
        for parameter in [*layer.lora_A, *layer.lora_B]:
            parameter.normal_()
    decisions = 1 if granularity == "utterance" else frames
    logits = torch.randn(batch, decisions, num_experts, requires_grad=True)
    probs = logits.softmax(-1)
    weights, indices = probs.topk(top_k, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)
    return layer, RouterOutput(logits, probs, indices, weights, None), torch.randn(batch, frames, d_in)


@pytest.mark.parametrize("granularity", ["utterance", "token"])
def test_mixture_delta_equals_the_reference_loop_and_the_previous_implementation(granularity):
    layer, routing, x = make_layer_and_routing(granularity)
    with torch.no_grad():
        expected = reference_loop_delta(layer, x, routing)
        assert torch.allclose(layer.mixture_delta(x, routing), expected, atol=1e-4)
        base = layer.base_layer(x)
        added = layer.mixture_delta(x, routing, add_to=base.clone())
        assert torch.allclose(added, base + expected, atol=1e-4)
        assert torch.allclose(added, previous_mixture_delta(layer, x, routing, add_to=base), atol=1e-5)


@pytest.mark.parametrize("granularity", ["utterance", "token"])
def test_mixture_gradients_equal_the_previous_implementation(granularity):
    gradients = []
    for implementation in (MoLExLinear.mixture_delta, previous_mixture_delta):
        layer, routing, x = make_layer_and_routing(granularity)
        x.requires_grad_(True)
        base = layer.base_layer(x)
        out = implementation(layer, x, routing, add_to=base)
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        gradients.append([x.grad, routing.logits.grad, *(p.grad for p in [*layer.lora_A, *layer.lora_B])])
    for new, old in zip(*gradients, strict=True):
        assert torch.allclose(new, old, atol=1e-4), (new - old).abs().max()


def test_gates_are_expanded_once_per_router_and_forward():
    _, routing, _ = make_layer_and_routing("utterance")
    first = routing.rank_gates(4, torch.float32)
    assert first is routing.rank_gates(4, torch.float32)
    assert first.shape == (3, 1, 8)
    assert torch.equal(first[..., :4], routing.top_k_weights[..., :1].expand(-1, -1, 4))


@pytest.mark.parametrize("granularity", ["utterance", "token"])
def test_model_logits_and_gradients_are_unchanged(granularity, monkeypatch):
    torch.manual_seed(0)
    adapter = MoLExAdapterConfig(num_experts=4, top_k=2, r=4, router_granularity=granularity)
    model = MoLExForAudioClassification(MoLExConfig(backbone_config=tiny_backbone_config("wav2vec2"), adapter=adapter))
    randomize_experts(model)
    model.config.head_dropout = 0.0
    model.eval()
    audio = torch.randn(2, 3200)
    mask = torch.ones_like(audio, dtype=torch.long)
    mask[1, 2000:] = 0
    results = []
    for implementation in (None, previous_mixture_delta):
        if implementation is not None:
            monkeypatch.setattr(MoLExLinear, "mixture_delta", implementation)
        model.zero_grad()
        output = model(audio, attention_mask=mask, labels=torch.tensor([0, 1]))
        output.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((output.logits.detach(), grads))
    (new_logits, new_grads), (old_logits, old_grads) = results
    assert torch.allclose(new_logits, old_logits, atol=1e-5)
    assert new_grads.keys() == old_grads.keys() and any(".lora_A." in n for n in new_grads)
    for name in new_grads:
        assert torch.allclose(new_grads[name], old_grads[name], atol=1e-5, rtol=1e-4), name


def test_bf16_autocast_mixture_runs_and_stays_close_to_fp32():
    layer, routing, x = make_layer_and_routing("utterance")
    with torch.no_grad():
        fp32 = layer.mixture_delta(x, routing, add_to=layer.base_layer(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = layer.mixture_delta(x, routing, add_to=layer.base_layer(x))
    assert bf16.dtype == torch.bfloat16
    assert (bf16.float() - fp32).abs().max() <= 0.05 * fp32.abs().max()


def previous_orthogonality_loss(lora_a):
    num_experts, rank, _ = lora_a.shape
    rows = torch.nn.functional.normalize(lora_a.float().reshape(num_experts * rank, -1), dim=-1)
    gram = rows @ rows.T
    expert_id = torch.arange(num_experts).repeat_interleave(rank)
    return gram.pow(2)[expert_id[:, None] != expert_id[None, :]].mean()


@pytest.mark.parametrize("num_experts,rank,d_in", [(2, 4, 16), (8, 8, 16), (64, 8, 32), (3, 2, 200)])
def test_orthogonality_loss_and_its_gradient_equal_the_previous_implementation(num_experts, rank, d_in):
    torch.manual_seed(0)
    lora_a = torch.randn(num_experts, rank, d_in, dtype=torch.float64)
    values, gradients = [], []
    for implementation in (expert_orthogonality_loss, previous_orthogonality_loss):
        leaf = lora_a.clone().float().requires_grad_(True)
        value = implementation(leaf)
        value.backward()
        values.append(value.detach())
        gradients.append(leaf.grad)
    assert torch.allclose(values[0], values[1], rtol=1e-4, atol=1e-7)
    assert torch.allclose(gradients[0], gradients[1], rtol=1e-3, atol=1e-7)


def test_orthogonality_loss_is_zero_for_orthogonal_experts():
    basis = torch.linalg.qr(torch.randn(16, 16))[0].T  # 16 orthonormal rows
    lora_a = (basis[:8] * 3.0).reshape(2, 4, 16)  # two experts reading disjoint directions
    assert abs(float(expert_orthogonality_loss(lora_a))) < 1e-6
    assert abs(float(previous_orthogonality_loss(lora_a))) < 1e-6
