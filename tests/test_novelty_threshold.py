"""The novel-attack threshold is the 95th percentile of the reference clips' own novelty scores.

Analysing the reference split against itself writes every reference clip's novelty score (the TSV), so the threshold
in routing_signatures.json (what the demo flags with) must equal the 95th percentile of exactly those scores.
"""

import json

import numpy as np
import pytest
import torch
from conftest import randomize_experts, tiny_backbone_config
from train_fixtures import write_synthetic_asvspoof5

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification
from training.analysis.analyze_experts import SIGNATURES_FILE, analyze


@pytest.mark.slow  # a full analysis run (scoring a small corpus)
def test_threshold_is_the_95th_percentile_of_reference_novelty(tmp_path):
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=5)
    torch.manual_seed(0)  # a seed whose windowed novelty scores are spread out (see the asserts)
    adapter = MoLExAdapterConfig(num_experts=4, top_k=2, r=4, router_granularity="token")  # continuous usage
    model = MoLExForAudioClassification(MoLExConfig(backbone_config=tiny_backbone_config("wav2vec2"), adapter=adapter))
    randomize_experts(model, std=1.0)
    with torch.no_grad():  # strong router rows: frames route differently -> spread-out scores
        for router in model.routers().values():
            for weight in router.parameters():
                weight.normal_(0.0, 2.0)
    model.save_pretrained(tmp_path / "model")
    results = analyze(str(tmp_path / "model"), str(corpus), "train", "train", str(tmp_path / "out"), batch_size=5)
    rows = (tmp_path / "out" / "routing_signatures_train.tsv").read_text().splitlines()[1:]
    novelty = np.array([float(row.split("\t")[3]) for row in rows])
    ordered = np.sort(novelty)
    assert len(novelty) == 10 and ordered[-1] - ordered[-2] > 0.003, f"scores too alike for this test: {ordered}"
    p95, p50 = np.percentile(novelty, 95), np.percentile(novelty, 50)
    assert p95 - p50 > 0.02, f"scores too alike to tell percentiles apart: {ordered}"
    threshold = json.loads((tmp_path / "model" / SIGNATURES_FILE).read_text())["threshold"]
    assert abs(threshold - p95) < 3e-4  # the TSV rounds scores to 4 decimals
    assert results["novelty"]["threshold"] == threshold
    assert (novelty > threshold).sum() == 1  # between the 9th and 10th of 10 scores
