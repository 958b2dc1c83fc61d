"""Core behaviour of MoLExForAudioClassification on every supported backbone family (tiny random backbones)."""

import pytest
import torch
from conftest import FAMILIES, SSL_FAMILIES, random_audio, randomize_experts, tiny_backbone_config
from transformers import AutoConfig, AutoModel

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification
from modeling_molex.layers import MoLExLinear
from modeling_molex.routing_state import routing_scope


SIX_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "out_proj", "intermediate_dense", "output_dense"]
WHISPER_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]  # k_proj has no bias in Whisper
FAMILY_TARGETS = [
    (family, target)
    for family in FAMILIES
    for target in (WHISPER_PROJECTIONS if family == "whisper" else SIX_PROJECTIONS)
]
# The frozen layer below the transformer blocks whose output must not build a graph in training.
FRONT_END = {"whisper": "encoder.conv2"}


def build(family: str, **adapter_kwargs) -> MoLExForAudioClassification:
    adapter = MoLExAdapterConfig(**{"num_experts": 4, "top_k": 2, "r": 4, **adapter_kwargs})
    torch.manual_seed(0)
    return MoLExForAudioClassification(MoLExConfig(backbone_config=tiny_backbone_config(family), adapter=adapter))


@pytest.mark.parametrize("family", SSL_FAMILIES)  # Whisper: tests/test_whisper_backbone.py
def test_identity_at_init_equals_frozen_backbone(family, tiny_backbone_dirs):
    model = MoLExForAudioClassification.from_backbone(
        tiny_backbone_dirs[family], adapter=MoLExAdapterConfig(num_experts=4, top_k=2, r=4)
    ).eval()
    vanilla = AutoModel.from_pretrained(tiny_backbone_dirs[family]).eval()
    audio = random_audio()
    mask = torch.ones_like(audio, dtype=torch.long)
    mask[1, 3000:] = 0
    with torch.no_grad(), routing_scope(model._frame_mask(audio, mask)):
        ours = model.backbone(audio, attention_mask=mask, output_hidden_states=True).hidden_states
        theirs = vanilla(audio, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_backbone_frozen_only_experts_routers_head_train(family):
    model = build(family)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable, "something must train"
    for name in trainable:
        assert ".lora_" in name or "molex_router" in name or not name.startswith("backbone."), name
    assert any(".lora_A." in n for n in trainable) and any("molex_router" in n for n in trainable)
    assert all(not p.requires_grad for n, p in model.backbone.named_parameters() if "base_layer" in n)
    counts = model.trainable_parameter_counts()
    assert counts["trainable"] == counts["experts"] + counts["routers"] + counts["back-end"]
    assert counts["trainable"] < counts["all"]


@pytest.mark.parametrize(("family", "target"), FAMILY_TARGETS)
def test_each_target_module_really_changes_the_output(family, target):
    """Catches wrappers that the backbone bypasses (transformers' WavLM attention reads raw .weight)."""
    model = build(family, target_modules=[target]).eval()
    audio = random_audio()
    with torch.no_grad():
        before = model(audio, output_hidden_states=True).hidden_states[-1]
        randomize_experts(model)
        after = model(audio, output_hidden_states=True).hidden_states[-1]
    assert (before - after).abs().max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_every_expert_and_router_row_gets_a_gradient(family):
    # top_k = E so that every expert is selected for every clip.
    model = build(family, top_k=4).train()
    randomize_experts(model)
    out = model(random_audio(), labels=torch.tensor([0, 1]))
    out.loss.backward()
    for name, layer in model.expert_layers().items():
        for key, stacked in (("A", layer.lora_A[0]), ("B", layer.lora_B[0])):
            per_expert = stacked.grad.abs().flatten(1).sum(dim=1)  # (E,)
            assert (per_expert > 0).all(), f"{name} lora_{key} experts without gradient: {per_expert}"
    for name, router in model.routers().items():
        per_row = router.weight[0].grad.abs().sum(dim=1)
        assert (per_row > 0).all(), f"router {name} rows without gradient: {per_row}"
    assert all(p.grad is None for n, p in model.backbone.named_parameters() if "base_layer" in n)


@pytest.mark.parametrize("granularity", ["utterance", "token"])
@pytest.mark.parametrize("scope", ["block", "module"])
def test_top_k_selects_exactly_k_and_matches_a_reference_loop(granularity, scope):
    model = build("wav2vec2", num_experts=5, top_k=2, router_granularity=granularity, router_scope=scope).eval()
    randomize_experts(model)
    audio = random_audio()
    with torch.no_grad():
        out = model(audio)
        with routing_scope(None) as routing:
            model.backbone(audio)
    assert set(routing.records) == set(model.router_names)
    for record in routing.records.values():
        gates = record.dense_gates()  # (B, S, E)
        assert ((gates > 0).sum(-1) == 2).all()
        torch.testing.assert_close(gates.sum(-1), torch.ones(gates.shape[:2]))
    usage = out.expert_usage  # (B, R, E)
    torch.testing.assert_close(usage.sum(-1), torch.full(usage.shape[:2], 2.0))
    # The batched mixture equals an explicit sum over selected experts of gate * expert delta.
    layer: MoLExLinear = model.expert_layers()["encoder.layers.0.feed_forward.intermediate_dense"]
    routing = routing.records[layer.router_name]
    frames = routing.probs.shape[1] if granularity == "token" else 7
    x = torch.randn(2, frames, layer.in_features)
    gates = routing.dense_gates()
    reference = sum(gates[..., e : e + 1] * layer.expert_delta(x, e) for e in range(5))
    torch.testing.assert_close(layer.mixture_delta(x, routing), reference, atol=1e-5, rtol=1e-4)


def test_padding_does_not_change_a_clip_score():
    """Routing, pooling and the backbone all respect the attention mask (layer-norm backbone, as XLS-R)."""
    model = build("wav2vec2-xlsr").eval()
    randomize_experts(model)
    clip = random_audio(1, 3000, seed=3)
    padded = torch.cat([clip, torch.zeros(1, 1000)], dim=1)
    batch = torch.cat([padded, random_audio(1, 4000, seed=4)])
    mask = torch.ones_like(batch, dtype=torch.long)
    mask[0, 3000:] = 0
    with torch.no_grad():
        alone = model(clip).logits[0]
        in_batch = model(batch, attention_mask=mask).logits[0]
    torch.testing.assert_close(alone, in_batch, atol=1e-4, rtol=1e-4)


def test_loss_only_with_labels_and_aux_losses_returned_separately():
    model = build("wav2vec2")
    audio = random_audio()
    model.eval()
    with torch.no_grad():
        out = model(audio)
    assert out.loss is None and out.aux_loss is None and out.logits.shape == (2, 2)
    model.train()
    out = model(audio, labels=torch.tensor([1, 0]))
    adapter = model.config.adapter
    expected_aux = (
        adapter.load_balance_coef * out.load_balance_loss
        + adapter.orthogonality_coef * out.orthogonality_loss
        + adapter.router_z_loss_coef * out.router_z_loss
    )
    torch.testing.assert_close(out.aux_loss, expected_aux)
    ce = torch.nn.functional.cross_entropy(out.logits, torch.tensor([1, 0]))
    torch.testing.assert_close(out.loss, ce + out.aux_loss)


def test_class_weights_change_the_loss():
    torch.manual_seed(0)
    model = build("wav2vec2").eval()
    audio, labels = random_audio(), torch.tensor([1, 0])
    with torch.no_grad():
        plain = model(audio, labels=labels).loss
        model.config.class_weights = [1.0, 9.0]
        weighted = model(audio, labels=labels).loss
    assert not torch.isclose(plain, weighted)


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_forward_runs(family):
    model = build(family).to(torch.bfloat16).eval()
    randomize_experts(model)
    with torch.no_grad():
        out = model(random_audio().to(torch.bfloat16))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits.float()).all()
    assert out.expert_usage.shape == (2, 2, 4)


def test_detection_score_convention_and_calibration():
    model = build("wav2vec2")
    logits = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    torch.testing.assert_close(model.detection_score(logits), torch.tensor([-3.0, 3.0]))
    model.config.calibration = {"scale": 0.5, "bias": 1.0}
    torch.testing.assert_close(model.detection_score(logits), torch.tensor([-0.5, 2.5]))
    assert model.config.id2label == {0: "spoof", 1: "bonafide"}


@pytest.mark.parametrize("family", ["wav2vec2", "whisper"])  # Whisper: its blocks are called by our wrapper
def test_gradient_checkpointing_gives_the_same_gradients(family):
    model = build(family, top_k=4).train()
    randomize_experts(model)
    audio, labels = random_audio(), torch.tensor([0, 1])
    torch.manual_seed(0)  # same dropout masks in both runs
    model(audio, labels=labels).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable()
    torch.manual_seed(0)
    model(audio, labels=labels).loss.backward()
    for name, grad in reference.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_graph_below_the_transformer_in_training(family):
    """The frozen CNN feature encoder must not build a graph (transformers marks its output as requiring grad in
    training unless it is frozen with `_freeze_parameters`), or training stores and backpropagates it for nothing."""
    model = build(family).train()
    captured = {}
    model.backbone.get_submodule(FRONT_END.get(family, "feature_extractor")).register_forward_hook(
        lambda m, i, o: captured.update(requires_grad=o.requires_grad)
    )
    model(random_audio(), labels=torch.tensor([0, 1])).loss.backward()
    assert captured["requires_grad"] is False


def test_save_and_reload_is_bit_exact(tmp_path):
    """Loaded safetensors tensors are views into the file at 8-byte offsets; CPU GEMM kernels sum differently on
    memory that is not 64-byte aligned (logits moved by ~2e-9). Reloaded weights must be aligned like fresh ones."""
    backbone_config = AutoConfig.for_model(
        "wav2vec2",
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        conv_dim=[128],
        conv_kernel=[400],
        conv_stride=[320],
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    torch.manual_seed(0)
    AutoModel.from_config(backbone_config).save_pretrained(tmp_path / "backbone")
    fresh = MoLExForAudioClassification.from_backbone(
        str(tmp_path / "backbone"), adapter=MoLExAdapterConfig(num_experts=4, top_k=2, r=4, lora_alpha=8)
    ).eval()
    randomize_experts(fresh)
    fresh.save_pretrained(tmp_path / "model")
    reloaded = MoLExForAudioClassification.from_pretrained(tmp_path / "model").eval()
    misaligned = [name for name, p in reloaded.named_parameters() if p.data_ptr() % 64]
    assert not misaligned, f"{len(misaligned)} reloaded parameters are not 64-byte aligned, e.g. {misaligned[:3]}"
    inputs = fresh.feature_extractor()(
        random_audio(1, 32000, seed=5)[0].numpy(), sampling_rate=16000, return_tensors="pt"
    )
    with torch.inference_mode():
        assert torch.equal(reloaded(**inputs).logits, fresh(**inputs).logits)
