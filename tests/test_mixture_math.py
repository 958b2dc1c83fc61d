"""The expert mixture inside the REAL forward pass, against the formula computed by hand.

Every expert-carrying linear must return `base(x) + (lora_alpha / r) * sum_e gate_e * B_e A_e x`, where the gates are
the router's top-k softmax probabilities (renormalised over the k when k > 1) of the router input: the block input
(block scope) or the linear's own input (module scope), mean-pooled over frames for utterance routing. Hooks record
what each linear and block really received and returned during `model(audio)`; nothing here calls a helper branch of
the layer, so a bug in the path the model takes (e.g. the scaling in the fused `baddbmm`/`addmm` accumulation) fails.
"""

import pytest
import torch
from conftest import random_audio, randomize_experts, tiny_backbone_config

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification


NUM_EXPERTS = 5


def build(granularity: str, scope: str, top_k: int) -> MoLExForAudioClassification:
    # lora_alpha / r = 1.5: neither 1 nor the PEFT default, so a dropped or doubled scaling cannot hide.
    adapter = MoLExAdapterConfig(
        num_experts=NUM_EXPERTS,
        top_k=top_k,
        r=4,
        lora_alpha=6.0,
        router_granularity=granularity,
        router_scope=scope,
    )
    torch.manual_seed(0)
    model = MoLExForAudioClassification(MoLExConfig(backbone_config=tiny_backbone_config("wav2vec2"), adapter=adapter))
    randomize_experts(model, std=0.3)
    with torch.no_grad():  # decisive router logits: the hand computation picks the same experts as the model
        for router in model.routers().values():
            for weight in router.parameters():
                weight.normal_(0.0, 1.0)
    return model.eval()


def hand_gates(features: torch.Tensor, router_weight: torch.Tensor, top_k: int) -> torch.Tensor:
    """(B, S, D) router input -> (B, S, E) gates: softmax, keep the top k, renormalise them when k > 1."""
    probs = (features.float() @ router_weight.float().T).softmax(dim=-1)
    values, indices = probs.topk(top_k, dim=-1)
    if top_k > 1:
        values = values / values.sum(dim=-1, keepdim=True)
    return torch.zeros_like(probs).scatter(-1, indices, values)


def record_real_forward(model: MoLExForAudioClassification, audio: torch.Tensor) -> dict[str, dict]:
    """Run `model(audio)` and return, per expert linear, its input, its output and its block's input."""
    captured: dict[str, dict] = {}
    block_inputs: dict[int, torch.Tensor] = {}
    handles = []
    for index, block in enumerate(model.backbone.encoder.layers):

        def save_block_input(module, args, kwargs, index=index):
            block_inputs[index] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

        handles.append(block.register_forward_pre_hook(save_block_input, with_kwargs=True))
    for path, layer in model.expert_layers().items():

        def save_io(module, args, output, path=path):
            captured[path] = {"x": args[0].detach().clone(), "y": output.detach().clone()}

        handles.append(layer.register_forward_hook(save_io))
    try:
        with torch.no_grad():
            model(audio)
    finally:
        for handle in handles:
            handle.remove()
    for path, record in captured.items():
        record["block_input"] = block_inputs[int(path.split(".")[2])]  # encoder.layers.<i>.<...>
    return captured


def router_for(model: MoLExForAudioClassification, path: str, scope: str) -> torch.Tensor:
    _, _, block_index, inner = path.split(".", 3)
    name = f"layer_{block_index}" if scope == "block" else f"layer_{block_index}.{inner}"
    return model.routers()[name].full_weight().detach()


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("scope", ["block", "module"])
@pytest.mark.parametrize("granularity", ["utterance", "token"])
def test_every_expert_linear_outputs_base_plus_scaled_gated_sum(granularity, scope, top_k):
    """y = W x + b + (alpha/r) * sum_e gate_e * B_e A_e x for every adapted linear, in the model's own forward."""
    model = build(granularity, scope, top_k)
    adapter = model.config.adapter
    scaling = adapter.lora_alpha / adapter.r
    captured = record_real_forward(model, random_audio(2, 4000, seed=7))
    assert len(captured) == 12  # 6 projections x 2 blocks, each checked below
    frames_choose_differently = False
    for path, record in captured.items():
        layer = model.expert_layers()[path]
        x, y = record["x"], record["y"]
        router_input = record["block_input"] if scope == "block" else x
        if granularity == "utterance":
            router_input = router_input.mean(dim=1, keepdim=True)  # no padding in this batch
        gates = hand_gates(router_input, router_for(model, path, scope), top_k)  # (B, 1 or T, E)
        assert ((gates > 0).sum(-1) == top_k).all()
        if granularity == "token":
            frames_choose_differently |= bool((gates[:, :1] != gates).any())
        base = x @ layer.base_layer.weight.T + layer.base_layer.bias
        lora_a, lora_b = layer.stacked_lora_a().detach(), layer.stacked_lora_b().detach()  # (E, r, in), (E, r, out)
        mixture = sum(gates[..., e : e + 1] * ((x @ lora_a[e].T) @ lora_b[e]) for e in range(NUM_EXPERTS))
        expected = base + scaling * mixture
        assert (scaling * mixture).abs().max() > 1e-2, f"{path}: experts too weak to tell a bug from rounding"
        torch.testing.assert_close(y, expected, atol=2e-5, rtol=1e-4, msg=f"{path}: output is not the mixture")
    if granularity == "token":
        assert frames_choose_differently, "token routing must pick different experts in different frames here"


def test_disabled_experts_leave_exactly_the_base_linear():
    """`disable_adapter()` (as peft's: compare with the frozen backbone) removes the whole delta, nothing else."""
    model = build("utterance", "block", 2)
    with model.disable_adapter():
        captured = record_real_forward(model, random_audio(1, 3000, seed=1))
    for path, record in captured.items():
        layer = model.expert_layers()[path]
        torch.testing.assert_close(record["y"], record["x"] @ layer.base_layer.weight.T + layer.base_layer.bias)


def test_two_frame_clip_with_token_routing_is_routed_per_frame():
    """A clip of exactly 2 frames with token routing: each frame keeps its own experts (not the first frame's)."""
    model = build("token", "block", 1)
    scaling = model.config.adapter.lora_alpha / model.config.adapter.r
    audio = random_audio(2, 35, seed=2)  # 35 samples -> 6 -> 2 frames through the tiny CNN
    captured = record_real_forward(model, audio)
    differs = False
    for path, record in captured.items():
        layer = model.expert_layers()[path]
        x = record["x"]
        assert x.shape[1] == 2
        gates = hand_gates(record["block_input"], router_for(model, path, "block"), 1)
        differs |= bool((gates[:, 0] != gates[:, 1]).any())
        lora_a, lora_b = layer.stacked_lora_a().detach(), layer.stacked_lora_b().detach()
        mixture = sum(gates[..., e : e + 1] * ((x @ lora_a[e].T) @ lora_b[e]) for e in range(NUM_EXPERTS))
        expected = x @ layer.base_layer.weight.T + layer.base_layer.bias + scaling * mixture
        torch.testing.assert_close(record["y"], expected, atol=2e-5, rtol=1e-4)
    assert differs, "the two frames must choose different experts somewhere for this test to bite"
