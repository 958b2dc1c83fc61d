"""The comparison's bookkeeping, without training (issue 19's mutation audit): known and unseen columns are not
swapped anywhere (MFCC rows, neural rows, the table), ± is the sample standard deviation over seeds, and the minimum
router entropy is the most collapsed block's, not the first block's."""

import statistics

import numpy as np
import pytest
from train_fixtures import write_synthetic_asvspoof5

from training import compare


def test_summary_is_the_mean_and_the_sample_standard_deviation_over_seeds():
    runs = [{"dev_eer": 0.1, "eval_known_eer": None}, {"dev_eer": 0.3, "eval_known_eer": 0.2}, {"dev_eer": 0.5}]
    summary = compare.summarise(runs)
    assert summary["dev_eer"]["mean"] == pytest.approx(0.3)
    assert summary["dev_eer"]["std"] == pytest.approx(0.2) == pytest.approx(statistics.stdev([0.1, 0.3, 0.5]))
    assert summary["eval_known_eer"] == {"mean": 0.2, "std": 0.0}  # one seed reported it: no spread
    assert "eval_unseen_eer" not in summary


def test_entropy_columns_take_the_most_collapsed_block_not_the_first():
    balance = {"block_0": {"entropy_nats": 1.2}, "block_1": {"entropy_nats": 0.3}, "block_2": {"entropy_nats": 0.9}}
    assert compare.entropy_columns(balance) == {"router_entropy": pytest.approx(0.8), "min_router_entropy": 0.3}


def _cells(table: str, row: int) -> dict[str, str]:
    lines = table.splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return dict(zip(header, (cell.strip() for cell in lines[row].strip("|").split("|")), strict=True))


def test_the_table_puts_known_and_unseen_under_their_own_headers():
    runs = [
        {"seed": s, "dev_eer": 0.1, "dev_min_dcf": 0.2, "eval_known_eer": 0.05, "eval_unseen_eer": 0.4} for s in (0, 1)
    ]
    runs[1] |= {"eval_known_eer": 0.07, "router_entropy": 1.0, "min_router_entropy": 0.5}
    runs[0] |= {"router_entropy": 1.2, "min_router_entropy": 0.7}
    cells = _cells(compare.table({"molex_e8k2": {"summary": compare.summarise(runs)}}), 2)
    assert cells["system"] == "MoLEx E=8, k=2"
    assert cells["eval EER known (%)"] == "6.0 ± 1.4" and cells["eval EER unseen (%)"] == "40.0 ± 0.0"
    assert cells["dev EER (%)"] == "10.0 ± 0.0" and cells["dev minDCF"] == "0.200 ± 0.000"
    assert cells["router entropy mean / min (nats)"] == "1.10 ± 0.14 / 0.60 ± 0.14"


def test_a_neural_row_reads_known_and_unseen_from_their_own_metrics(tmp_path, monkeypatch):
    metrics = {"dev": {"eer": 0.1, "min_dcf": 0.2}, "eval_known_attacks": {"eer": 0.05}}
    metrics["eval_unseen_attacks"] = {"eer": 0.4}
    monkeypatch.setattr(compare.train, "main", lambda argv: {"metrics": metrics})
    monkeypatch.setattr(compare, "trainable_parameters", lambda config: 123)
    argv = ["--backbone", "tiny-random", "--data_root", str(tmp_path)]
    row = compare.run_neural("single_lora", 0, argv, tmp_path / "out")  # no choice of experts: no entropy pass
    assert row == {"dev_eer": 0.1, "dev_min_dcf": 0.2, "eval_known_eer": 0.05, "eval_unseen_eer": 0.4,
                   "trainable_parameters": 123, "train_seconds": row["train_seconds"]}  # fmt: skip


def test_the_mfcc_row_scores_known_and_unseen_attacks_separately(tmp_path):
    """Eval holds A01 (a training attack) and A04 (unseen). Scores rank every A01 spoof above every bona fide clip
    (EER 1) and every A04 spoof below (EER 0): a swap of the two columns shows."""
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=4)
    argv = ["--backbone", "tiny-random", "--data_root", str(corpus)]
    data = compare.load_corpus(compare.parse_train_config([*argv, "--seed", "0"]))
    level = {"bonafide": 0.0, "A01": 1.0, "A04": -1.0, "A03": -1.0}  # A03: the dev attack
    scores = {
        split: {u: level[a] for u, a in zip(data[split]["utt_id"], data[split]["attack"], strict=True)}
        for split in ("dev", "eval")
    }
    mfcc = {**scores, "known_attacks": ["A01", "A02"], "parameters": 7, "seconds": 1.0}
    row = compare.run_mfcc(0, argv, mfcc)
    assert (row["eval_known_eer"], row["eval_unseen_eer"]) == (1.0, 0.0)
    assert row["dev_eer"] == 0.0 and row["trainable_parameters"] == 7


def test_mfcc_known_attacks_are_the_training_attacks_and_the_configured_ones(monkeypatch):
    data = {
        "train": {"utt_id": ["t1", "t2", "t3"], "attack": ["bonafide", "A01", "A02"]},
        "dev": {"utt_id": ["d1"], "attack": ["A03"]},
        "eval": {"utt_id": ["e1", "e2"], "attack": ["A07", "A10"]},
    }
    scores = {"dev": np.array([0.5]), "eval": np.array([1.0, -1.0])}
    monkeypatch.setattr(compare, "fit_and_score", lambda corpus, features, l2: (data, scores, 14))
    result = compare.mfcc_lr_scores("corpus", ["A07"])
    assert result["known_attacks"] == ["A01", "A02", "A07"]
    assert result["eval"] == {"e1": 1.0, "e2": -1.0} and result["dev"] == {"d1": 0.5} and result["parameters"] == 14
