"""TopKRouter and the auxiliary losses, against values computed by hand."""

import math

import pytest
import torch

from modeling_molex.router import (
    RouterOutput,
    TopKRouter,
    expert_orthogonality_loss,
    load_balancing_loss,
    router_z_loss,
)


def record_from_logits(logits: torch.Tensor, top_k: int, mask: torch.Tensor | None = None) -> RouterOutput:
    probs = logits.softmax(-1)
    weights, indices = probs.topk(top_k, dim=-1)
    return RouterOutput(logits, probs, indices, weights / weights.sum(-1, keepdim=True), mask)


def test_load_balance_is_one_for_uniform_routing_and_e_for_collapse():
    # 4 decisions spread evenly over 4 experts with flat probabilities -> exactly 1.
    logits = torch.zeros(1, 4, 4)
    record = record_from_logits(logits, 1)
    record.top_k_indices = torch.arange(4).view(1, 4, 1)
    assert load_balancing_loss([record]).item() == pytest.approx(1.0)
    # Everything to expert 0 with probability ~1 -> E.
    collapsed = record_from_logits(torch.tensor([[[50.0, 0.0, 0.0, 0.0]] * 4]), 1)
    assert load_balancing_loss([collapsed]).item() == pytest.approx(4.0, rel=1e-4)


def test_padding_decisions_do_not_count():
    logits = torch.tensor([[[5.0, 0.0], [0.0, 5.0], [9.0, 0.0]]])  # (1, 3, 2)
    mask = torch.tensor([[True, True, False]])
    masked = load_balancing_loss([record_from_logits(logits, 1, mask)])
    unpadded = load_balancing_loss([record_from_logits(logits[:, :2], 1)])
    torch.testing.assert_close(masked, unpadded)
    torch.testing.assert_close(
        router_z_loss([record_from_logits(logits, 1, mask)]), router_z_loss([record_from_logits(logits[:, :2], 1)])
    )


def test_z_loss_is_mean_squared_logsumexp():
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])
    expected = (math.log(math.exp(1) + math.exp(2) + math.exp(3)) ** 2 + math.log(3) ** 2) / 2
    assert router_z_loss([record_from_logits(logits, 1)]).item() == pytest.approx(expected, rel=1e-6)


def test_orthogonality_loss_zero_for_disjoint_subspaces_one_for_identical():
    eye = torch.eye(6)
    disjoint = eye.view(3, 2, 6)  # expert e reads coordinates 2e, 2e+1
    assert expert_orthogonality_loss(disjoint).item() == pytest.approx(0.0, abs=1e-7)
    identical = torch.randn(1, 2, 6).repeat(3, 1, 1)
    rows = torch.nn.functional.normalize(identical[0], dim=-1)
    # Mean over cross-expert row pairs of cos^2: every expert holds the same two rows.
    expected = ((rows @ rows.T) ** 2).mean().item()
    assert expert_orthogonality_loss(identical).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("granularity", ["utterance", "token"])
def test_router_shapes_and_float32(granularity):
    router = TopKRouter(8, [3, 2], top_k=2, granularity=granularity)
    for weight in router.weight:
        torch.nn.init.normal_(weight)
    hidden = torch.randn(2, 5, 8, dtype=torch.bfloat16)
    out = router(hidden, torch.ones(2, 5, dtype=torch.bool))
    steps = 1 if granularity == "utterance" else 5
    assert out.logits.shape == (2, steps, 5) and out.logits.dtype == torch.float32
    assert out.top_k_indices.shape == (2, steps, 2)
    torch.testing.assert_close(out.top_k_weights.sum(-1), torch.ones(2, steps))


def test_top_one_routing_keeps_the_probability_so_the_router_learns():
    router = TopKRouter(4, [3], top_k=1)
    torch.nn.init.normal_(router.weight[0])
    out = router(torch.randn(2, 5, 4))
    assert (out.top_k_weights < 1).all()
    out.top_k_weights.sum().backward()
    assert router.weight[0].grad.abs().sum() > 0


def test_router_noise_only_in_training():
    router = TopKRouter(4, [4], top_k=2, noise_std=1.0)
    torch.nn.init.normal_(router.weight[0])
    hidden = torch.randn(2, 5, 4)
    router.eval()
    torch.testing.assert_close(router(hidden).logits, router(hidden).logits)
    router.train()
    assert not torch.allclose(router(hidden).logits, router(hidden).logits)


def test_utterance_routing_ignores_padding_frames():
    router = TopKRouter(4, [4], top_k=2)
    torch.nn.init.normal_(router.weight[0])
    clip = torch.randn(1, 3, 4)
    padded = torch.cat([clip, torch.full((1, 2, 4), 100.0)], dim=1)
    mask = torch.tensor([[True, True, True, False, False]])
    torch.testing.assert_close(router(padded, mask).logits, router(clip).logits)
