"""Router edge cases found by mutation testing: empty and fully padded decisions, two-expert orthogonality, router
noise scale, growing a router by a pack, and padding frames in token routing through the real forward."""

import pytest
import torch
from conftest import random_audio, randomize_experts, router_record, tiny_backbone_config

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification
from modeling_molex.router import (
    TopKRouter,
    expert_orthogonality_loss,
    load_balancing_loss,
    router_z_loss,
)


@pytest.mark.parametrize("loss", [load_balancing_loss, router_z_loss])
def test_no_real_decision_gives_a_zero_loss_not_nan(loss):
    """A router that saw only padding (or no router at all) contributes nothing, instead of a NaN mean."""
    padding_only = router_record([[1.0, 2.0, 0.0]], top_k=2, mask=[False])
    for records in ([], [padding_only]):
        value = loss(records)
        assert value.shape == () and value.item() == 0.0


@pytest.mark.parametrize("loss", [load_balancing_loss, router_z_loss])
def test_padding_only_routers_are_skipped_not_ending_the_average(loss):
    """Routers with no real decision are left out of the mean over routers; the others still count, including one
    with a single decision."""
    padding_only = router_record([[1.0, 2.0, 0.0]], top_k=2, mask=[False])
    single = router_record([[3.0, 0.0, 1.0]], top_k=2)
    two = router_record([[0.0, 1.0, 2.0], [2.0, 2.0, 0.0]], top_k=2)
    expected = (loss([single]) + loss([two])) / 2
    torch.testing.assert_close(loss([padding_only, single, two]), expected)
    assert loss([single]).item() > 0


def test_orthogonality_of_two_identical_experts_is_one_and_a_single_expert_is_zero():
    rows = torch.nn.functional.normalize(torch.randn(1, 3, 8), dim=-1)
    twins = rows.repeat(2, 1, 1)  # expert 1 reads exactly what expert 0 reads
    expected = ((rows[0] @ rows[0].T) ** 2).mean()
    torch.testing.assert_close(expert_orthogonality_loss(twins), expected)
    single = expert_orthogonality_loss(torch.randn(1, 3, 8, dtype=torch.bfloat16))
    assert single.shape == () and single.dtype == torch.float32 and single.item() == 0.0


def test_orthogonality_normalises_rows_not_columns():
    """Scaling one expert's rows must not change the loss (cosines, not dot products)."""
    lora_a = torch.randn(3, 2, 8)
    scaled = lora_a.clone()
    scaled[1] *= 10.0
    torch.testing.assert_close(expert_orthogonality_loss(scaled), expert_orthogonality_loss(lora_a))


def test_router_noise_has_the_configured_scale():
    router = TopKRouter(4, [4], top_k=2, noise_std=0.01)
    torch.nn.init.normal_(router.weight[0])
    hidden = torch.randn(64, 5, 4)
    clean = router.eval()(hidden).logits
    noisy = router.train()(hidden).logits
    spread = (noisy - clean).std().item()
    assert 0.005 < spread < 0.02


def test_add_pack_appends_given_rows_or_zeros_as_new_trainable_parameters():
    router = TopKRouter(6, [3], top_k=2).to(torch.float64)
    torch.nn.init.normal_(router.weight[0])
    first = router.full_weight().detach().clone()
    rows = torch.randn(2, 6, dtype=torch.float64)
    router.add_pack(2, rows=rows)
    router.add_pack(1)
    assert router.num_experts == 6 and len(list(router.parameters())) == 3
    weight = router.full_weight()
    assert weight.shape == (6, 6) and weight.dtype == torch.float64
    assert torch.equal(weight[:3], first) and torch.equal(weight[3:5], rows) and torch.equal(weight[5], torch.zeros(6))
    assert isinstance(router.weight[1], torch.nn.Parameter) and router.weight[1].requires_grad
    out = router(torch.randn(2, 4, 6, dtype=torch.float64))
    assert out.logits.shape == (2, 1, 6)


def test_padding_frames_are_not_token_routing_decisions():
    """A padded clip routes, and its usage and losses count, exactly as the clip alone (token routing)."""
    adapter = MoLExAdapterConfig(num_experts=4, top_k=2, r=4, router_granularity="token")
    torch.manual_seed(0)
    model = MoLExForAudioClassification(
        MoLExConfig(backbone_config=tiny_backbone_config("wav2vec2-xlsr"), adapter=adapter)
    )
    randomize_experts(model)
    with torch.no_grad():
        for router in model.routers().values():
            for weight in router.parameters():
                weight.normal_(0.0, 1.0)
    model.eval()
    clip = random_audio(1, 3000, seed=3)
    padded = torch.cat([clip, torch.zeros(1, 1000)], dim=1)
    mask = torch.ones_like(padded, dtype=torch.long)
    mask[0, 3000:] = 0
    with torch.no_grad():
        alone = model(clip, labels=torch.tensor([1]))
        with_padding = model(padded, attention_mask=mask, labels=torch.tensor([1]))
    torch.testing.assert_close(with_padding.expert_usage, alone.expert_usage, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(with_padding.router_probs, alone.router_probs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(with_padding.load_balance_loss, alone.load_balance_loss, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(with_padding.router_z_loss, alone.router_z_loss, atol=1e-4, rtol=1e-4)


def test_add_pack_creates_rows_on_the_routers_device():
    router = TopKRouter(6, [3], top_k=2).to("meta")  # any non-CPU device would do; meta needs no hardware
    router.add_pack(2)
    assert router.weight[1].device.type == "meta" and router.full_weight().shape == (5, 6)
