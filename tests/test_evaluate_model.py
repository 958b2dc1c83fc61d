"""Scoring a saved model on a corpus split (evaluate_model) and the domain-adaptation experiment."""

import csv
import json

import pytest
import torch
from audio_fixtures import write_in_the_wild
from conftest import randomize_experts, tiny_backbone_config
from train_fixtures import write_synthetic_asvspoof5

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification
from training.analysis import domain_adaptation
from training.data.loaders import load_asvspoof5
from training.evaluate_model import evaluate_model
from training.metrics.score_files import read_score_file


def save_tiny_model(folder, calibration=None) -> str:
    torch.manual_seed(0)
    config = MoLExConfig(
        backbone_config=tiny_backbone_config("wav2vec2"),
        adapter=MoLExAdapterConfig(num_experts=4, top_k=2, r=4),
        calibration=calibration,
    )
    model = MoLExForAudioClassification(config)
    randomize_experts(model)
    model.save_pretrained(folder)
    return str(folder)


@pytest.mark.slow
def test_evaluate_model_writes_scores_and_uses_the_stored_calibration(tmp_path):
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=3)
    raw = evaluate_model(save_tiny_model(tmp_path / "raw"), str(corpus), split="eval", output_dir=str(tmp_path / "a"))
    calibrated_dir = save_tiny_model(tmp_path / "calibrated", calibration={"scale": 2.0, "bias": -1.0})
    calibrated = evaluate_model(calibrated_dir, str(corpus), split="eval", output_dir=str(tmp_path / "b"))
    assert raw["metrics"]["eer"] == calibrated["metrics"]["eer"]  # an increasing affine map keeps the EER
    assert raw["metrics"]["cllr"] != calibrated["metrics"]["cllr"] and calibrated["calibrated"]
    raw_scores = read_score_file(tmp_path / "a" / "eval_scores.tsv")
    calibrated_scores = read_score_file(tmp_path / "b" / "eval_scores.tsv")
    assert len(raw_scores) == 6
    for name, score in raw_scores.items():
        assert abs(calibrated_scores[name] - (2.0 * score - 1.0)) < 1e-9
    assert json.loads((tmp_path / "a" / "eval_results.json").read_text())["metrics"] == raw["metrics"]
    model = MoLExForAudioClassification.from_pretrained(calibrated_dir).eval()  # the model's own scoring path
    for name, score in list(calibrated_scores.items())[:2]:
        assert model.score_file(next(corpus.rglob(f"{name}.flac"))).score == pytest.approx(score, abs=1e-5)


def test_evaluate_model_on_in_the_wild(tmp_path):
    root = write_in_the_wild(tmp_path / "itw")
    result = evaluate_model(save_tiny_model(tmp_path / "model"), str(root), dataset="in_the_wild", split="eval")
    assert result["metrics"]["num_bonafide"] >= 1 and result["metrics"]["num_spoof"] >= 1


@pytest.mark.slow
def test_domain_adaptation_reports_old_and_new_domain_before_and_after(tmp_path):
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=16)
    base = save_tiny_model(tmp_path / "base")
    tiny = ["--max_steps", "2", "--batch_size", "4", "--crop_samples", "8000", "--eval_batch_size", "8"]
    report = domain_adaptation.adapt_and_compare(base, str(corpus), str(tmp_path / "da"), ["A04"], 2, tiny)
    assert set(report["new_domain_sizes"]) == {"train", "dev", "eval"}
    for stage in ("before", "after"):
        assert set(report[stage]) == {"old_domain_dev", "new_domain_eval"}
        assert 0.0 <= report[stage]["new_domain_eval"]["eer"] <= 1.0
    adapted = json.loads((tmp_path / "da" / "adapted" / "model" / "config.json").read_text())
    assert adapted["adapter"]["expert_packs"] == {"base": 4, "new_domain": 2}
    rows = (tmp_path / "da" / "new_domain.csv").read_text().splitlines()[1:]
    assert rows and all(",A01," not in row for row in rows)  # only bona fide and the new attack


def test_replay_adds_old_domain_train_clips_to_the_new_train_split_only(tmp_path):
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=6)
    plain = domain_adaptation.write_new_domain_csv(str(corpus), ["A04"], tmp_path / "plain.csv")
    sizes = domain_adaptation.write_new_domain_csv(str(corpus), ["A04"], tmp_path / "replay.csv", replay=5, seed=3)
    assert sizes["replay"] == 5 and sizes["train"] == plain["train"] and sizes["eval"] == plain["eval"]
    with open(tmp_path / "replay.csv") as handle:
        rows = list(csv.DictReader(handle))
    replayed = [row for row in rows if row["utt_id"].startswith("T_")]
    assert len(replayed) == 5 and {row["split"] for row in replayed} == {"train"}
    old_train = load_asvspoof5(str(corpus), splits=["train"])["train"]
    assert {row["utt_id"] for row in replayed} <= set(old_train["utt_id"])
    again = domain_adaptation.write_new_domain_csv(str(corpus), ["A04"], tmp_path / "again.csv", replay=5, seed=3)
    assert again == sizes and (tmp_path / "again.csv").read_text() == (tmp_path / "replay.csv").read_text()
    with pytest.raises(ValueError, match="`replay` asks for 999 old-domain clips"):
        domain_adaptation.write_new_domain_csv(str(corpus), ["A04"], tmp_path / "x.csv", replay=999)
