"""Router auxiliary losses at top-k = 2 (the paper's setting), by hand and through the real forward pass.

Documented values (router.py): the load-balancing loss `E * sum_e f_e * P_e` is 1 for uniform routing and E / k when
every decision goes to the same k experts (f_e is divided by k so that it sums to 1); the z-loss is the mean squared
log-sum-exp of the router logits, so (ln E)^2 when every logit is 0.
"""

import math

import pytest
import torch
from conftest import random_audio, router_record, tiny_backbone_config

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification
from modeling_molex.router import load_balancing_loss, router_z_loss


def test_load_balance_at_top2_collapsed_onto_two_experts_is_e_over_k():
    # Every decision picks experts {0, 1} with probability ~1/2 each: f = P = [1/2, 1/2, 0, 0] -> 4 * 1/2 = E/k = 2.
    collapsed = router_record([[40.0, 40.0, 0.0, 0.0]] * 3, top_k=2)
    assert load_balancing_loss([collapsed]).item() == pytest.approx(2.0, rel=1e-6)


def test_load_balance_at_top2_with_known_routing_matches_the_formula():
    # Decision 1 picks {0, 1}, decision 2 picks {0, 3}: f = counts / (N k) = [2, 1, 0, 1] / 4.
    logits = [[2.0, 1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 1.0]]
    routed = router_record(logits, top_k=2)
    assert routed.top_k_indices[0].sort(-1).values.tolist() == [[0, 1], [0, 3]]
    probs = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in logits]
    mean_prob = [(probs[0][e] + probs[1][e]) / 2 for e in range(4)]
    fraction = [2 / 4, 1 / 4, 0.0, 1 / 4]
    expected = 4 * sum(f * p for f, p in zip(fraction, mean_prob, strict=True))
    assert load_balancing_loss([routed]).item() == pytest.approx(expected, rel=1e-6)


def test_load_balance_at_top2_is_averaged_over_routers_and_skips_padding():
    uniform = router_record([[0.0] * 4, [0.0] * 4], top_k=2)  # P uniform -> 1 whatever is selected
    collapsed = router_record(
        [[40.0, 40.0, 0.0, 0.0], [40.0, 40.0, 0.0, 0.0], [0.0, 0.0, 40.0, 40.0]], 2, [True, True, False]
    )
    assert load_balancing_loss([uniform, collapsed]).item() == pytest.approx((1.0 + 2.0) / 2, rel=1e-6)


def build(granularity: str, scope: str) -> MoLExForAudioClassification:
    adapter = MoLExAdapterConfig(num_experts=4, top_k=2, r=4, router_granularity=granularity, router_scope=scope)
    torch.manual_seed(0)
    return MoLExForAudioClassification(MoLExConfig(backbone_config=tiny_backbone_config("wav2vec2"), adapter=adapter))


@pytest.mark.parametrize(("granularity", "scope"), [("utterance", "block"), ("token", "module")])
def test_uniform_routers_give_the_documented_values_in_the_real_forward(granularity, scope):
    """All router rows 0 -> uniform probabilities: load balance exactly 1 at k = 2, z-loss (ln 4)^2, and `loss`
    is the cross-entropy plus the documented weighted sum of the auxiliary losses."""
    model = build(granularity, scope).eval()
    with torch.no_grad():
        for router in model.routers().values():
            for weight in router.parameters():
                weight.zero_()
        labels = torch.tensor([0, 1])
        out = model(random_audio(), labels=labels)
    assert out.load_balance_loss.item() == pytest.approx(1.0, rel=1e-6)
    assert out.router_z_loss.item() == pytest.approx(math.log(4) ** 2, rel=1e-6)
    assert out.orthogonality_loss.item() > 0  # random A rows are never exactly orthogonal
    adapter = model.config.adapter
    expected_aux = (
        adapter.load_balance_coef * 1.0
        + adapter.router_z_loss_coef * math.log(4) ** 2
        + adapter.orthogonality_coef * out.orthogonality_loss.item()
    )
    assert out.aux_loss.item() == pytest.approx(expected_aux, rel=1e-5)
    cross_entropy = torch.nn.functional.cross_entropy(out.logits.float(), labels).item()
    assert out.loss.item() == pytest.approx(cross_entropy + expected_aux, rel=1e-5)


def test_z_loss_at_top2_ignores_padded_decisions():
    padded = router_record([[1.0, 2.0, 3.0, 4.0], [50.0, 0.0, 0.0, 0.0]], top_k=2, mask=[True, False])
    expected = math.log(sum(math.exp(v) for v in (1.0, 2.0, 3.0, 4.0))) ** 2
    assert router_z_loss([padded]).item() == pytest.approx(expected, rel=1e-6)
