"""Expert dropout, a router-collapse remedy: in training each expert is hidden from a routing decision with
probability p, never below k available experts; in evaluation routing is untouched."""

import torch
from conftest import tiny_backbone_config

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification
from modeling_molex.router import TopKRouter


def dominated_router(expert_dropout: float, top_k: int = 1) -> TopKRouter:
    """Four experts; expert 0's logit beats the others by 10 for every input, so without dropout it always wins."""
    router = TopKRouter(3, [4], top_k=top_k, expert_dropout=expert_dropout)
    with torch.no_grad():
        router.weight[0].zero_()
        router.weight[0][0, 0] = 10.0
    return router


def test_expert_dropout_hides_the_favourite_expert_at_the_configured_rate():
    torch.manual_seed(0)
    router = dominated_router(0.25).train()
    hidden = torch.ones(4000, 1, 3)  # 4000 utterance decisions
    chosen = router(hidden).top_k_indices[:, 0, 0]
    share = (chosen == 0).float().mean().item()
    assert abs(share - 0.75) < 0.03  # expert 0 is available (and wins) in 1 - p of the decisions
    assert set(chosen.tolist()) == {0, 1, 2, 3}  # the others get traffic only through dropout


def test_expert_dropout_is_off_in_evaluation():
    router = dominated_router(0.5).eval()
    chosen = router(torch.ones(500, 1, 3)).top_k_indices
    assert bool((chosen == 0).all())


def test_expert_dropout_never_leaves_fewer_than_k_experts_nor_picks_a_masked_one():
    torch.manual_seed(0)
    router = dominated_router(0.9, top_k=2).train()
    only_two = torch.tensor([True, False, True, False])  # exactly k experts active: nothing may be dropped
    out = router(torch.randn(300, 7, 3), expert_mask=only_two)
    assert set(out.top_k_indices.unique().tolist()) == {0, 2}
    assert torch.isfinite(out.top_k_weights).all()
    torch.testing.assert_close(out.top_k_weights.sum(-1), torch.ones(300, 1))
    free = router(torch.randn(300, 7, 3))  # p = 0.9 over 4 experts: often < 2 would survive, the decision stays
    assert torch.isfinite(free.top_k_weights).all()
    assert bool((free.top_k_indices[..., 0] != free.top_k_indices[..., 1]).all())


def test_expert_dropout_reaches_every_router_of_the_model():
    config = MoLExConfig(
        backbone_config=tiny_backbone_config("wav2vec2"),
        adapter=MoLExAdapterConfig(num_experts=4, top_k=2, r=2, router_expert_dropout=0.3),
    )
    model = MoLExForAudioClassification(config)
    routers = [m for m in model.modules() if isinstance(m, TopKRouter)]
    assert routers and all(router.expert_dropout == 0.3 for router in routers)
    reloaded = MoLExConfig.from_dict(config.to_dict())
    assert reloaded.adapter.router_expert_dropout == 0.3
