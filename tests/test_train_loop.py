"""The training loop's decisions, on a run whose dev metric is scripted to go down and then up (issue 13).

The dev EER of evaluation i is forced to `SCRIPTED_EER[i]` (the real scores are still computed and the rest of
the metrics are real), so the loop must pick step 3, stop after `patience` evaluations without improvement, ship
the step-3 weights and keep only `save_total_limit` checkpoints.
"""

import json

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from train_fixtures import tiny_run_args, write_synthetic_asvspoof5

from training import train
from training.trainer import loop, run_setup
from training.trainer.checkpointing import list_checkpoints


SCRIPTED_EER = [0.40, 0.30, 0.20, 0.35, 0.45, 0.50, 0.55, 0.60]  # best at the 3rd evaluation (step 3)
PATIENCE, KEEP = 2, 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_synthetic_asvspoof5(tmp_path_factory.mktemp("corpus"), per_class=4)


@pytest.fixture(scope="module")
def scripted_run(corpus, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("scripted")
    real_metrics_for = loop.metrics_for
    evaluations = []

    def scripted_metrics_for(scores, calibration):
        metrics = real_metrics_for(scores, calibration)
        metrics["eer"] = SCRIPTED_EER[len(evaluations)]
        evaluations.append(metrics["eer"])
        return metrics

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "metrics_for", scripted_metrics_for)
        args = ["--max_steps", "8", "--eval_every_steps", "1", "--eval_split", "", "--learning_rate", "0.01"]
        args += ["--early_stopping_patience", str(PATIENCE), "--save_total_limit", str(KEEP)]
        results = train.main(tiny_run_args(corpus, output_dir, *args))
    return output_dir, results, evaluations


def test_the_best_step_is_the_lowest_dev_metric(scripted_run):
    output_dir, results, _ = scripted_run
    assert results["best_step"] == 3
    assert [record["eer"] for record in results["dev_history"]] == SCRIPTED_EER[:5]
    assert json.loads((output_dir / "results.json").read_text())["best_step"] == 3


def test_early_stopping_fires_after_patience_evaluations_without_improvement(scripted_run):
    _, results, evaluations = scripted_run
    # best at step 3, no improvement at steps 4 and 5: patience 2 stops the run at step 5 of 8
    assert results["global_step"] == 3 + PATIENCE
    assert len(evaluations) == 3 + PATIENCE


def test_only_save_total_limit_checkpoints_remain(scripted_run):
    output_dir, _, _ = scripted_run
    checkpoints = list_checkpoints(output_dir)
    steps = [json.loads((p / "training_state.json").read_text())["global_step"] for p in checkpoints]
    assert steps == [3, 4, 5]  # 5 evaluations, 5 checkpoints written, the oldest 2 pruned


def test_the_saved_model_holds_the_best_checkpoints_weights(scripted_run):
    output_dir, _, _ = scripted_run
    checkpoints = {
        json.loads((p / "training_state.json").read_text())["global_step"]: p for p in list_checkpoints(output_dir)
    }
    at_best = load_file(checkpoints[3] / "trainable.safetensors")
    at_end = load_file(checkpoints[5] / "trainable.safetensors")
    shipped = load_file(output_dir / "model" / "model.safetensors")
    moved = [name for name in at_best if not torch.equal(at_best[name], at_end[name])]
    assert moved, "training did not change the weights between steps 3 and 5: the test would be vacuous"
    for name, tensor in at_best.items():
        assert torch.equal(shipped[name], tensor), f"{name}: the shipped model is not the best evaluation's"
    best_in_last = load_file(checkpoints[5] / "best_trainable.safetensors")
    assert all(torch.equal(best_in_last[name], tensor) for name, tensor in at_best.items())


def test_a_trainable_parameter_without_gradient_stops_training(corpus, tmp_path, monkeypatch):
    """A trainable tensor the forward never uses (an expert the backbone bypasses) must not train silently."""
    real_build_model = run_setup.build_model

    def build_model_with_a_bypassed_parameter(config, accelerator):
        model = real_build_model(config, accelerator)
        model.register_parameter("bypassed_expert", torch.nn.Parameter(torch.zeros(3)))
        return model

    monkeypatch.setattr(loop, "build_model", build_model_with_a_bypassed_parameter)
    with pytest.raises(RuntimeError, match=r"1 trainable parameters got no gradient, e.g. \['bypassed_expert'\]"):
        train.main(tiny_run_args(corpus, tmp_path, "--max_steps", "1", "--eval_split", ""))


def test_launches_that_would_train_silently_wrong_are_refused(monkeypatch):
    """Processes that accelerate runs each alone would train duplicates; --use_fsdp on CPU silently becomes DDP
    (and checkpoints hold whole tensors, not shards): both are errors that say what to do."""
    accelerator = Accelerator(cpu=True)
    loop.check_launch(accelerator)  # one process, no sharding: fine
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match=r"2 processes were launched .* pass `--cpu true`"):
        loop.check_launch(accelerator)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(RuntimeError, match="FSDP/DeepSpeed sharding is not supported"):
        loop.check_launch(accelerator)
