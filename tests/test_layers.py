"""MoLExLinear beyond the mixture formula (found by mutation testing): LoRA dropout, growing by a pack, one expert's
delta, dtypes (bf16 backbone with float32 experts), padding seen by module-scope routers, a clear error when an
expert layer is called outside the model."""

import pytest
import torch
from conftest import random_audio, randomize_experts, tiny_backbone_config

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification


def build(seed: int = 0, family: str = "wav2vec2", **adapter_kwargs) -> MoLExForAudioClassification:
    adapter = MoLExAdapterConfig(**{"num_experts": 4, "top_k": 2, "r": 4, "lora_alpha": 6.0, **adapter_kwargs})
    torch.manual_seed(seed)
    model = MoLExForAudioClassification(MoLExConfig(backbone_config=tiny_backbone_config(family), adapter=adapter))
    randomize_experts(model, std=0.3)
    return model


def last_hidden(model: MoLExForAudioClassification, audio: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(audio, output_hidden_states=True, **kwargs).hidden_states[-1]


def test_lora_dropout_acts_in_training_only_and_zero_means_none():
    """The tiny backbone has no dropout of its own, so differing hidden states come from the experts' dropout."""
    audio = random_audio()
    dropped = build(lora_dropout=0.5).train()
    assert not torch.equal(last_hidden(dropped, audio), last_hidden(dropped, audio))
    dropped.eval()
    torch.testing.assert_close(last_hidden(dropped, audio), last_hidden(dropped, audio), atol=0, rtol=0)
    plain = build(lora_dropout=0.0).train()
    torch.testing.assert_close(last_hidden(plain, audio), last_hidden(plain, audio), atol=0, rtol=0)


def test_expert_delta_is_one_scaled_lora_product():
    model = build()
    scaling = 6.0 / 4
    for layer in model.expert_layers().values():
        x = torch.randn(2, 3, layer.in_features)
        for expert in (0, 3):
            a, b = layer.stacked_lora_a()[expert], layer.stacked_lora_b()[expert]  # (r, in), (r, out)
            torch.testing.assert_close(layer.expert_delta(x, expert), scaling * (x @ a.T) @ b)
        assert layer.expert_delta(x, 1).abs().max() > 1e-3
        assert layer.expert_delta(x.to(torch.bfloat16), 2).dtype == torch.bfloat16  # float32 experts, bf16 input


def test_a_new_pack_keeps_old_experts_and_starts_with_zero_delta_in_the_model_dtype():
    model = build().to(torch.float64)
    before = {
        path: (layer.stacked_lora_a().clone(), layer.stacked_lora_b().clone())
        for path, layer in model.expert_layers().items()
    }
    model.add_experts(2, pack_name="new")
    for path, layer in model.expert_layers().items():
        old_a, old_b = before[path]
        a, b = layer.stacked_lora_a(), layer.stacked_lora_b()
        assert a.shape[0] == b.shape[0] == layer.num_experts == 6
        assert all(parameter.dtype == torch.float64 for parameter in layer.parameters())
        assert torch.equal(a[:4], old_a) and torch.equal(b[:4], old_b), path
        assert torch.count_nonzero(b[4:]) == 0
        bound = layer.in_features**-0.5  # PEFT's LoRA A init: U(-1/sqrt(d_in), 1/sqrt(d_in))
        assert a[4:].abs().max() <= bound and a[4:].abs().max() > bound / 2
        assert layer.weight is layer.base_layer.weight and layer.bias is layer.base_layer.bias
        assert "experts=6" in repr(layer) and "r=4" in repr(layer) and "scaling=1.5" in repr(layer)


@pytest.mark.parametrize("granularity", ["utterance", "token"])
def test_float32_experts_on_a_bf16_backbone(granularity):
    """Trainable experts are often kept in float32 while the frozen backbone runs in bf16: the layer casts the
    experts and the float32 router gates to the activations' dtype."""
    model = build(router_granularity=granularity).eval()
    audio = random_audio()
    reference = last_hidden(model, audio)
    model.to(torch.bfloat16)
    for layer in model.expert_layers().values():
        for parameter in list(layer.lora_A) + list(layer.lora_B):
            parameter.data = parameter.data.float()
    mixed = last_hidden(model, audio.to(torch.bfloat16))
    assert mixed.dtype == torch.bfloat16
    assert (mixed.float() - reference).abs().mean() < 0.05 * reference.abs().mean()


@pytest.mark.parametrize("granularity", ["utterance", "token"])
def test_module_scope_routers_ignore_padding_frames(granularity):
    # layer-norm feature encoder (as XLS-R): the backbone itself is padding-invariant, so any change is routing's
    model = build(family="wav2vec2-xlsr", router_scope="module", router_granularity=granularity).eval()
    with torch.no_grad():
        for router in model.routers().values():
            for weight in router.parameters():
                weight.normal_(0.0, 1.0)
    clip = random_audio(1, 3000, seed=3)
    padded = torch.cat([clip, torch.full((1, 1000), 0.5)], dim=1)
    mask = torch.ones_like(padded, dtype=torch.long)
    mask[0, 3000:] = 0
    with torch.no_grad():
        alone = model(clip)
        in_padding = model(padded, attention_mask=mask)
    torch.testing.assert_close(in_padding.expert_usage, alone.expert_usage)
    torch.testing.assert_close(in_padding.router_probs, alone.router_probs, atol=1e-4, rtol=1e-4)


def test_an_expert_layer_called_outside_the_model_says_how_to_call_it():
    model = build()  # block routers: the layer has no routing decision of its own
    layer = model.expert_layers()["encoder.layers.0.attention.q_proj"]
    with pytest.raises(
        RuntimeError, match=r"outside a routing scope\. Call the model \(MoLExForAudioClassification\)"
    ):
        layer(torch.randn(1, 3, layer.in_features))


def test_an_expert_layer_refuses_input_that_is_not_batch_frames_features_naming_its_shape():
    layer = build().expert_layers()["encoder.layers.0.attention.q_proj"]
    with pytest.raises(ValueError) as error:
        layer.mixture_delta(torch.randn(3, layer.in_features), routing=None)
    assert str(error.value) == (
        f"MoLExLinear expects (batch, frames, features) input, got shape (3, {layer.in_features})"
    )
