"""The comparison runner (python -m training.compare) on a tiny synthetic slice: one seed, two steps, every row."""

import json
import math

import yaml
from accelerate import Accelerator
from train_fixtures import write_synthetic_asvspoof5

from training import compare
from training.trainer.config import parse_train_config
from training.trainer.run_setup import build_model


def test_compare_runs_every_row_on_a_tiny_slice_and_counts_what_each_row_trains(tmp_path):
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=4, seconds=0.5)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {"backbone": "tiny-random", "data_root": str(corpus), "known_attacks": [], "learning_rate": 0.002,
             "eval_batch_size": 8, "cpu": True, "output_dir": str(tmp_path / "unused")}
        )
    )  # fmt: skip
    output = tmp_path / "compare"
    args = ["--config", str(config), "--output_dir", str(output), "--seeds", "0", "--max_steps", "2"]
    results = compare.main([*args, "--batch_size", "4", "--crop_samples", "8000", "--max_eval_samples", "6"])
    rows = results["rows"]
    assert list(rows) == compare.PAPER_ROWS
    saved = json.loads((output / "results.json").read_text())
    assert saved["rows"].keys() == rows.keys() and saved["settings"]["max_steps"] == 2
    for name, row in rows.items():
        (run,) = row["runs"]
        assert run["seed"] == 0 and 0 <= run["dev_eer"] <= 1 and 0 <= run["eval_unseen_eer"] <= 1, name
        assert row["summary"]["dev_eer"]["std"] == 0.0  # one seed
        has_choice = name.startswith("molex")  # single LoRA, frozen and full rows have no choice of experts
        assert ("router_entropy" in run) == has_choice, name
        if has_choice:
            experts = compare.ROWS[name][1]["num_experts"]
            assert 0.0 <= run["min_router_entropy"] <= run["router_entropy"] <= math.log(experts) + 1e-6
    params = {name: row["runs"][0]["trainable_parameters"] for name, row in rows.items()}
    # The probe: one weight per pooled feature (mean + std of each of the 3 states of the 64-wide tiny encoder) + bias.
    assert params["linear_probe"] == 3 * 2 * 64 + 1
    assert params["frozen_backend"] < params["molex_e4k1"] < params["molex_e8k2"] == params["molex_e8k2_no_orth"]
    # Same LoRA budget: one rank-64 expert holds as many weights as eight rank-8 ones (routers aside).
    assert abs(params["single_lora"] - params["molex_e8k2"]) < 0.02 * params["molex_e8k2"]
    assert params["full_finetune"] > params["frozen_backend"]  # + the encoder's own weights
    # Every neural row of a seed is scored on the same dev subset, and MFCC + LR on that subset too.
    fixed = ("mfcc_lr", "linear_probe")  # fit once on all of train, scored on each seed's subsets
    dev_ids = {name: (output / name / "seed0" / "scores").glob("*dev*") for name in rows if name not in fixed}
    assert all(list(files) for files in dev_ids.values())
    table = (output / "table.md").read_text().splitlines()
    assert len(table) == 2 + len(compare.PAPER_ROWS) and "± 0.0" in table[2]


def test_router_collapse_remedy_rows_train_with_their_setting(tmp_path):
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=3, seconds=0.5)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"backbone": "tiny-random", "data_root": str(corpus), "cpu": True}))
    remedies = {"molex_e8k2_noise": "router_noise_std", "molex_e8k2_balance": "load_balance_coef",
                "molex_e8k2_expert_dropout": "router_expert_dropout"}  # fmt: skip
    output = tmp_path / "compare"
    args = ["--config", str(config), "--output_dir", str(output), "--seeds", "1", "--max_steps", "1"]
    results = compare.main([*args, "--batch_size", "4", "--crop_samples", "8000", "--rows", *remedies])
    for row, field in remedies.items():
        saved = json.loads((output / row / "seed1" / "model" / "config.json").read_text())
        assert saved["adapter"][field] == compare.ROWS[row][1][field] != 0.01, row  # not the default
        assert "router_entropy" in results["rows"][row]["runs"][0]


def test_full_fine_tuning_trains_every_encoder_weight_the_classifier_reaches_but_no_expert(tmp_path):
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=2, seconds=0.5)
    argv = ["--backbone", "tiny-random", "--data_root", str(corpus), "--output_dir", str(tmp_path)]
    model = build_model(parse_train_config([*argv, "--trainable", "full"]), Accelerator(cpu=True))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    base_weights = {name for name in dict(model.named_parameters()) if ".base_layer." in name}
    assert base_weights and base_weights <= trainable  # the adapted linears' own weights train
    assert not {name for name in trainable if ".lora_" in name or "router" in name}
    assert any("feature_extractor.conv_layers" in name for name in trainable)  # the CNN too
    head_only = build_model(parse_train_config([*argv, "--trainable", "head"]), Accelerator(cpu=True))
    assert {name for name, p in head_only.named_parameters() if p.requires_grad} == {
        name for name in trainable if not name.startswith("backbone.")
    }
