"""Expert analysis: usage tables, heatmap, routing signatures, novel-attack score."""

import json

import numpy as np
import pytest
import torch
from conftest import randomize_experts, tiny_backbone_config
from train_fixtures import write_synthetic_asvspoof5

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification
from training.analysis.analyze_experts import (
    SIGNATURES_FILE,
    analyze,
    novelty_scores,
    roc_auc,
    router_balance,
    specialisation,
    usage_by_group,
)


def test_novelty_is_zero_on_a_centroid_and_one_for_disjoint_routing():
    # 2 routers x 4 experts, top-2: known class uses experts {0, 1} everywhere.
    known = np.array([[1, 1, 0, 0], [1, 1, 0, 0]], dtype=float)
    disjoint = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], dtype=float)
    half = np.array([[1, 0, 1, 0], [1, 1, 0, 0]], dtype=float)
    clips = [known[None], disjoint[None], half[None], np.stack([known, disjoint])]  # the last: two windows
    scores = novelty_scores(clips, {"A01": known.reshape(-1)}, top_k=2)
    np.testing.assert_allclose(scores, [0.0, 1.0, 0.25, 0.5])


def test_roc_auc_matches_pairwise_counting_with_ties():
    positive, negative = np.array([0.9, 0.5, 0.5]), np.array([0.5, 0.1])
    pairs = [(p > n) + 0.5 * (p == n) for p in positive for n in negative]
    assert roc_auc(positive, negative) == pytest.approx(np.mean(pairs))


def test_router_balance_turns_collapse_into_a_number():
    """Collapsed routing (every clip picks experts 0 and 1 of 4, k = 2) has load [.5, .5, 0, 0] and entropy ln 2;
    routing spread over all four experts reaches ln 4."""
    collapsed = np.tile(np.array([[1.0, 1.0, 0.0, 0.0]]), (6, 1, 1))  # (clips, routers, experts)
    spread = np.array([[[1.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0, 1.0]]] * 3)
    skewed = np.array([[[1.0, 1.0, 0.0, 0.0]], [[1.0, 0.0, 1.0, 0.0]], [[1.0, 0.0, 0.0, 1.0]]] * 2)
    balance = router_balance(np.concatenate([collapsed, spread, skewed], axis=1), ["a", "b", "c"], 2)
    assert balance["a"]["load"] == [0.5, 0.5, 0.0, 0.0]
    assert balance["a"]["entropy_nats"] == pytest.approx(np.log(2), abs=1e-4)
    assert balance["a"]["effective_experts"] == pytest.approx(2.0, abs=1e-3)
    assert balance["b"]["entropy_nats"] == pytest.approx(np.log(4), abs=1e-4) == balance["b"]["max_entropy_nats"]
    expected = [0.5, 1 / 6, 1 / 6, 1 / 6]  # expert 0 in every decision, the others in one of three each
    assert balance["c"]["load"] == pytest.approx(expected, abs=1e-4)
    assert balance["c"]["entropy_nats"] == pytest.approx(-sum(p * np.log(p) for p in expected), abs=1e-4)


def test_usage_tables_and_specialisation():
    usage = np.array([[[1, 0, 1]], [[1, 0, 1]], [[0, 1, 1]]], dtype=float)  # (3 clips, 1 router, 3 experts)
    table = usage_by_group(usage, ["A01", "A01", "A02"])
    np.testing.assert_allclose(table["A01"], [[1, 0, 1]])
    assert specialisation(table) == {"expert_0": ["A01"], "expert_1": ["A02"], "expert_2": []}


def saved_model(tmp_path):
    torch.manual_seed(0)
    adapter = MoLExAdapterConfig(num_experts=4, top_k=2, r=4)
    model = MoLExForAudioClassification(MoLExConfig(backbone_config=tiny_backbone_config("wav2vec2"), adapter=adapter))
    randomize_experts(model, std=1.0)
    model.save_pretrained(tmp_path / "model")
    return model


def test_empty_reference_split_and_unknown_known_attacks_are_clear_errors(tmp_path):
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=2)
    saved_model(tmp_path)
    with pytest.raises(ValueError, match=r"--known_attacks \['A99'\]: no such attack"):
        analyze(str(tmp_path / "model"), str(corpus), "eval", "train", str(tmp_path / "a"), known_attacks=["A99"])
    protocol = next(corpus.rglob("ASVspoof5.train.tsv"))
    protocol.write_text("")  # an empty reference split
    with pytest.raises(ValueError, match=r"train"):
        analyze(str(tmp_path / "model"), str(corpus), "eval", "train", str(tmp_path / "a"))


@pytest.mark.slow
def test_the_signatures_give_the_demo_the_novelty_the_analysis_computed(tmp_path):
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=3)
    model = saved_model(tmp_path)
    analyze(str(tmp_path / "model"), str(corpus), "eval", "train", str(tmp_path / "analysis"), batch_size=4)
    rows = (tmp_path / "analysis" / "routing_signatures_eval.tsv").read_text().splitlines()[1:]
    reloaded = MoLExForAudioClassification.from_pretrained(tmp_path / "model").eval()
    utt_id, novelty = rows[0].split("\t")[0], float(rows[0].split("\t")[3])
    audio = next(corpus.rglob(f"{utt_id}.flac"))
    assert reloaded.score_file(audio).novelty.distance == pytest.approx(novelty, abs=1e-4)
    del model


@pytest.mark.slow
def test_analysis_end_to_end_on_a_small_corpus(tmp_path):
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=4)
    torch.manual_seed(0)
    adapter = MoLExAdapterConfig(num_experts=4, top_k=2, r=4)
    model = MoLExForAudioClassification(MoLExConfig(backbone_config=tiny_backbone_config("wav2vec2"), adapter=adapter))
    randomize_experts(model, std=1.0)
    model.save_pretrained(tmp_path / "model")
    results = analyze(str(tmp_path / "model"), str(corpus), "eval", "train", str(tmp_path / "analysis"), batch_size=4)
    assert set(results["usage_by_attack"]) == {"A01", "A04", "bonafide"}
    for table in results["usage_by_attack"].values():
        assert np.allclose(np.asarray(table).sum(axis=-1), 2.0)  # each router picks exactly top-2
    for name in ("router_balance", "router_balance_reference"):
        assert list(results[name]) == model.router_names
        assert all(sum(router["load"]) == pytest.approx(1.0, abs=1e-3) for router in results[name].values())
    assert results["novelty"]["separation"]["num_unseen"] == 2  # the A04 spoofs: never seen in training
    assert 0.0 <= results["novelty"]["separation"]["roc_auc_unseen_vs_known"] <= 1.0
    assert (tmp_path / "analysis" / "expert_usage_eval.png").stat().st_size > 1000
    signatures = json.loads((tmp_path / "model" / SIGNATURES_FILE).read_text())
    assert set(signatures["known"]) == {"A01", "A02", "bonafide"}
    assert len(signatures["known"]["A01"]) == 2 * 4 and 0.0 <= signatures["threshold"] <= 1.0
    rows = (tmp_path / "analysis" / "routing_signatures_eval.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["utt_id", "attack", "codec", "novelty", "signature"] and len(rows) == 1 + 8
