"""The README's main job (python -m training.main_job) end to end on a very small mini corpus: corpus -> baseline ->
training -> eval once -> analysis -> results table, model folder and results.json."""

import json
from pathlib import Path

import pytest
import yaml
from test_mini_corpus import _packages_or_skip

from training import main_job


@pytest.mark.slow
def test_main_job_runs_end_to_end(tmp_path, capsys):
    _packages_or_skip()
    output = tmp_path / "main"
    train_args = [
        "--max_steps",
        "2",
        "--batch_size",
        "4",
        "--eval_batch_size",
        "8",
        "--num_experts",
        "4",
        "--rank",
        "4",
    ]
    molex = main_job.main(
        [
            "--output_dir",
            str(output),
            "--corpus_dir",
            str(tmp_path / "corpus"),
            "--per_attack",
            "2",
            "--bonafide_per_split",
            "4",
            "--train_args",
            *train_args,
        ]
    )
    printed = capsys.readouterr().out
    assert "| eval, unseen attacks |" in printed and "MFCC+LR EER (%)" in printed
    assert "expert-usage heatmap:" in printed
    assert "| A14 | Piper VITS neural TTS, en_US-joe-medium | known |" in printed  # per-attack rows, MoLEx and MFCC
    saved = json.loads((output / "results.json").read_text())
    assert saved == json.loads((output / "model" / "results.json").read_text())
    assert saved["metrics"]["eval_unseen_attacks"]["attacks"] == ["A10", "A11", "A12"]
    assert saved["metrics"]["eval_known_attacks"]["attacks"] == ["A07", "A08", "A09", "A14"]
    assert set(saved["baseline_mfcc"]) == {"dev", "eval", "eval_known", "eval_unseen"}
    assert (output / saved["figures"]["expert_usage"]).is_file()
    assert (output / "model" / "routing_signatures.json").is_file()
    assert molex["global_step"] == 2


@pytest.mark.slow
def test_main_job_pretrain_flag_recreates_the_encoder_and_trains_on_it(tmp_path, capsys):
    _packages_or_skip()
    recipe = yaml.safe_load(Path("configs/ssl_tiny.yaml").read_text())
    recipe |= {"extra_bonafide": False, "extra_spoofs_per_attack": 0, "kmeans_frames": 300, "batch_size": 2}
    recipe |= {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    recipe |= {"conv_dim": [16, 16, 16, 16], "num_conv_pos_embeddings": 8, "num_conv_pos_embedding_groups": 2}
    recipe["codebooks"] = [{"features": "logmel", "dims": 16, "clusters": 8}]
    pretrain_config = tmp_path / "ssl.yaml"
    pretrain_config.write_text(yaml.safe_dump(recipe))
    output = tmp_path / "main"
    train_args = ["--max_steps", "1", "--batch_size", "2", "--num_experts", "2", "--top_k", "1", "--rank", "2"]
    molex = main_job.main(
        [
            "--output_dir", str(output), "--corpus_dir", str(tmp_path / "corpus"), "--per_attack", "2",
            "--bonafide_per_split", "4", "--pretrain", "--pretrain_config", str(pretrain_config),
            "--pretrain_steps", "2", "--train_args", *train_args,
        ]
    )  # fmt: skip
    encoder = output / "ssl_pretraining" / "encoder"
    assert (encoder / "model.safetensors").is_file() and (encoder / "preprocessor_config.json").is_file()
    assert json.loads((encoder / "pretraining.json").read_text())["steps"] == 2
    assert molex["config"]["backbone"] == str(encoder)
    assert f"encoder: {encoder}" in capsys.readouterr().out
