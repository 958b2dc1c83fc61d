"""The README's main job (python -m training.main_job) end to end on a very small mini corpus: corpus -> baseline ->
training -> eval once -> analysis -> results table, model folder and results.json."""

import json

import pytest
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
    saved = json.loads((output / "results.json").read_text())
    assert saved == json.loads((output / "model" / "results.json").read_text())
    assert saved["metrics"]["eval_unseen_attacks"]["attacks"] == ["A10", "A11", "A12"]
    assert saved["metrics"]["eval_known_attacks"]["attacks"] == ["A07", "A08", "A09"]
    assert set(saved["baseline_mfcc"]) == {"dev", "eval", "eval_known", "eval_unseen"}
    assert (output / saved["figures"]["expert_usage"]).is_file()
    assert (output / "model" / "routing_signatures.json").is_file()
    assert molex["global_step"] == 2
