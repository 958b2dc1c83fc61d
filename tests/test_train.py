"""training/train.py end to end on a small synthetic ASVspoof-5-layout corpus: outputs, resume, two processes,
domain adaptation. Runs are a few optimizer steps of a tiny random backbone."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import write_synthetic_asvspoof5
from transformers import AutoModelForAudioClassification

from training import train
from training.metrics.score_files import read_score_file
from training.trainer.checkpointing import list_checkpoints, resolve_resume_path
from training.trainer.config import load_yaml_config, parse_train_config


REPO = Path(__file__).resolve().parents[1]
TINY = ["--num_experts", "4", "--rank", "4", "--batch_size", "4", "--eval_batch_size", "4", "--crop_samples", "8000"]
TINY += ["--cpu", "true", "--log_with", "none", "--head_hidden_size", "16", "--seed", "3"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_synthetic_asvspoof5(tmp_path_factory.mktemp("corpus"))


def run_args(corpus: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["--data_root", str(corpus), "--output_dir", str(output_dir), *TINY, *extra]


def run_script(args: list[str], launcher: list[str] | None = None, script: Path = REPO / "training" / "train.py"):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GLOO_SOCKET_IFNAME": "lo"}
    command = (launcher or [sys.executable]) + [str(script), *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def final_metrics(stdout: str) -> dict[str, str]:
    lines = [line.split(" ", 2) for line in stdout.splitlines() if line.startswith("FINAL_METRICS")]
    return {rank: payload for _, rank, payload in lines}


def test_two_step_run_writes_a_loadable_model_and_results(corpus, tmp_path):
    results = train.main(run_args(corpus, tmp_path, "--max_steps", "2", "--known_attacks", "A01"))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["global_step"] == 2 and saved["num_processes"] == 1
    for split in ("dev", "eval", "eval_known_attacks", "eval_unseen_attacks"):
        assert set(saved["metrics"][split]) >= {"eer", "min_dcf", "act_dcf", "cllr", "num_bonafide", "num_spoof"}
        assert 0.0 <= saved["metrics"][split]["eer"] <= 1.0
    assert saved["metrics"]["eval_unseen_attacks"]["attacks"] == ["A04"]
    assert saved["metrics"]["eval"]["num_bonafide"] == 6 and saved["metrics"]["eval"]["num_spoof"] == 6
    assert results["metrics"]["dev"] == saved["metrics"]["dev"]
    # The eval split is written once, in the official score-file format, with calibrated scores.
    scores = read_score_file(tmp_path / "scores" / "eval_scores.tsv")
    assert len(scores) == 12 and all(np.isfinite(list(scores.values())))
    assert (tmp_path / "scores" / "det.png").stat().st_size > 1000
    assert "A04" in (tmp_path / "scores" / "eval_by_attack.md").read_text()
    # The model folder loads through the Auto API, with the dev calibration stored in its config.
    model = AutoModelForAudioClassification.from_pretrained(tmp_path / "model", trust_remote_code=True)
    assert model.config.calibration == saved["calibration"]
    # After 2 steps the dev ranking may still be at or below chance: then no calibration is stored, never a
    # reversing one (scale < 0 would flip every verdict of the shipped model).
    assert saved["calibration"] is None or saved["calibration"]["scale"] > 0
    assert model.config.crop_samples == 8000  # the training crop, for scoring code that windows long clips
    assert (tmp_path / "model" / "train_config.yaml").is_file()
    assert (tmp_path / "model" / "experts" / "expert_0" / "adapter_model.safetensors").is_file()
    log = [json.loads(line) for line in (tmp_path / "logs" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "train"] == [1, 2]
    refused = [r for r in log if r["event"] == "calibration_not_stored"]
    assert len(refused) == (saved["calibration"] is None)  # a refused calibration is said in the log


@pytest.mark.slow
def test_resume_after_a_hard_kill_continues_like_an_uninterrupted_run(corpus, tmp_path):
    common = ["--max_steps", "4", "--eval_every_steps", "2", "--eval_split", ""]
    uninterrupted = run_script(run_args(corpus, tmp_path / "full", *common))
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    killer = Path(__file__).with_name("kill_after_checkpoint.py")
    killed = run_script(["2", *run_args(corpus, tmp_path / "resumed", *common)], script=killer)
    assert killed.returncode == 137, killed.stderr[-3000:]
    assert [p.name for p in list_checkpoints(tmp_path / "resumed")] == ["checkpoint_0"]
    # The best model so far is part of the checkpoint: a resume restores it with the rest of the state.
    assert (tmp_path / "resumed" / "checkpoints" / "checkpoint_0" / train.BEST_FILE).is_file()
    assert not (tmp_path / "resumed" / "results.json").exists()
    resumed = run_script(run_args(corpus, tmp_path / "resumed", *common, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "resumed" / "logs" / "train_log.jsonl").read_text().splitlines()]
    resumed_event = next(r for r in log if r["event"] == "resumed")
    assert resumed_event["global_step"] == 2
    steps_after_resume = [r["step"] for r in log[log.index(resumed_event) :] if r["event"] == "train"]
    assert steps_after_resume == [3, 4]
    train_log = {r["step"]: r for r in log if r["event"] == "train"}
    full_log = [json.loads(line) for line in (tmp_path / "full" / "logs" / "train_log.jsonl").read_text().splitlines()]
    for record in (r for r in full_log if r["event"] == "train"):
        assert train_log[record["step"]]["lr"] == pytest.approx(record["lr"])
        assert train_log[record["step"]]["loss"] == pytest.approx(record["loss"], rel=1e-4, abs=1e-5)
    full = load_file(tmp_path / "full" / "model" / "model.safetensors")
    again = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    for name, tensor in full.items():
        torch.testing.assert_close(again[name], tensor, atol=1e-6, rtol=1e-5)
    assert final_metrics(resumed.stdout)["rank=0"] == final_metrics(uninterrupted.stdout)["rank=0"]


# Deterministic training (no dropout anywhere, no batch-level load-balance loss), so that 2 processes x 2 clips
# and 1 process x 4 clips take exactly the same optimizer steps: 12 training clips, 3 steps, one epoch.
SAME_STEPS = ["--backbone_dropout", "0", "--head_dropout", "0", "--load_balance_coef", "0"]
SAME_STEPS += ["--learning_rate", "0.01", "--max_steps", "3", "--eval_every_steps", "1", "--eval_batch_size", "4"]
ACCELERATE = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--mixed_precision", "no"]
ACCELERATE += ["--dynamo_backend", "no"]


def assert_same_training(one: Path, other: Path) -> None:
    """Two runs trained the same weights (which moved from their zero init) and report the same metrics."""
    first, second = load_file(one / "model" / "model.safetensors"), load_file(other / "model" / "model.safetensors")
    assert set(first) == set(second)
    # Weights agree to ~1e-6; the attention-pooling logit bias (no true gradient: softmax ignores a shift) gets
    # Adam steps on round-off noise, hence atol 1e-4, still 100x below one step at this learning rate.
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, atol=1e-4, rtol=1e-3, msg=name)
    moved = [n for n, t in first.items() if n.startswith("classifier") and n.endswith("bias") and t.abs().max() > 1e-3]
    assert moved, "the zero-initialised classifier biases did not move: the comparison would be vacuous"
    metrics = [json.loads((run / "results.json").read_text())["metrics"] for run in (one, other)]
    for split, values in metrics[0].items():
        for key in ("eer", "min_dcf", "act_dcf", "cllr"):
            assert metrics[1][split][key] == pytest.approx(values[key], abs=1e-4), (split, key)


@pytest.fixture(scope="module")
def one_process_run(corpus, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("one_process")
    train.main(run_args(corpus, output_dir, *SAME_STEPS, "--batch_size", "4"))
    return output_dir


@pytest.mark.slow
def test_two_cpu_processes_train_like_one_process(corpus, tmp_path, one_process_run):
    launcher = [*ACCELERATE, "--num_processes", "2", "--num_machines", "1", "--main_process_port", "0"]
    completed = run_script(run_args(corpus, tmp_path, *SAME_STEPS, "--batch_size", "2"), launcher=launcher)
    assert completed.returncode == 0, completed.stderr[-4000:]
    metrics = final_metrics(completed.stdout)
    assert set(metrics) == {"rank=0", "rank=1"}
    assert metrics["rank=0"] == metrics["rank=1"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["num_processes"] == 2
    assert saved["metrics"]["eval"]["num_bonafide"] + saved["metrics"]["eval"]["num_spoof"] == 12  # no duplicates
    assert_same_training(one_process_run, tmp_path)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_two_nodes(corpus: Path, nodes: list[Path], *extra: str, script: Path | None = None, script_args=()):
    """Two `accelerate launch --num_machines 2` processes on localhost, one per simulated node, each with its
    own output_dir (nothing shared on disk)."""
    port, env = free_port(), {**os.environ, "HF_HUB_OFFLINE": "1", "GLOO_SOCKET_IFNAME": "lo"}
    script = script or REPO / "training" / "train.py"
    running = []
    for rank, node in enumerate(nodes):
        launcher = [*ACCELERATE, "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank)]
        launcher += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]
        args = run_args(corpus, node, *SAME_STEPS, "--batch_size", "2", *extra)
        command = [*launcher, str(script), *script_args, *args]
        running.append(
            subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    return [(process, *process.communicate(timeout=600)) for process in running]


@pytest.mark.slow
def test_two_nodes_without_a_shared_disk_resume_and_train_like_one_process(corpus, tmp_path, one_process_run):
    """Node 1 never sees node 0's disk: it gets the backbone, the resumed state and the best weights by
    broadcast, and writes nothing but its copy of the generated backbone."""
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    killer = Path(__file__).with_name("kill_after_checkpoint.py")
    killed = launch_two_nodes(corpus, nodes, script=killer, script_args=["2"])
    assert all(process.returncode != 0 for process, _, _ in killed), [err[-2000:] for _, _, err in killed]
    steps = [json.loads((p / "training_state.json").read_text())["global_step"] for p in list_checkpoints(nodes[0])]
    assert steps == [1, 2] and not (nodes[1] / "checkpoints").exists()
    resumed = launch_two_nodes(corpus, nodes, "--resume_from_checkpoint", "latest")
    for process, _, stderr in resumed:
        assert process.returncode == 0, stderr[-4000:]
    metrics = final_metrics(resumed[0][1] + resumed[1][1])
    assert set(metrics) == {"rank=0", "rank=1"} and metrics["rank=0"] == metrics["rank=1"]
    assert sorted(p.name for p in nodes[1].iterdir()) == ["tiny_backbone"]
    log = [json.loads(line) for line in (nodes[0] / "logs" / "train_log.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in log if r["event"] == "resumed"] == [2]
    assert_same_training(one_process_run, nodes[0])


def test_domain_adaptation_trains_only_the_new_experts(corpus, tmp_path):
    train.main(run_args(corpus, tmp_path / "base", "--max_steps", "1", "--eval_split", ""))
    base = load_file(tmp_path / "base" / "model" / "model.safetensors")
    train.main(
        run_args(
            corpus,
            tmp_path / "adapted",
            "--max_steps",
            "2",
            "--eval_split",
            "",
            "--init_from",
            str(tmp_path / "base" / "model"),
            "--add_experts",
            "2",
            "--new_pack_name",
            "domain_b",
        )
    )
    adapted = load_file(tmp_path / "adapted" / "model" / "model.safetensors")
    for name, tensor in base.items():
        assert torch.equal(adapted[name], tensor), f"{name} changed during domain adaptation"
    new = {name: tensor for name, tensor in adapted.items() if name not in base}
    assert new and all(name.endswith(".1") for name in new)
    config = json.loads((tmp_path / "adapted" / "model" / "config.json").read_text())
    assert config["adapter"]["expert_packs"] == {"base": 4, "domain_b": 2}
    assert config["adapter"]["frozen_packs"] == ["base"]


def test_yaml_config_with_overrides_and_errors(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("data_root: /data\nnum_experts: 6\ntop_k: 3\n")
    config = parse_train_config(["--config", str(config_file), "--top_k", "1"])
    assert (config.data_root, config.num_experts, config.top_k) == ("/data", 6, 1)
    config_file.write_text("data_root: /data\nnum_expert: 6\n")
    with pytest.raises(ValueError, match=r"run.yaml: unknown config key\(s\) \['num_expert'\]"):
        load_yaml_config(config_file)
    with pytest.raises(ValueError, match="`top_k`"):
        parse_train_config(["--data_root", "/x", "--num_experts", "2", "--top_k", "3"])
    with pytest.raises(ValueError, match="`add_experts` needs `init_from`"):
        parse_train_config(["--data_root", "/x", "--add_experts", "2"])


def test_shipped_configs_parse():
    for name in ("tiny.yaml", "tiny_ssl.yaml", "asvspoof5_xlsr300m.yaml", "asvspoof5_wavlm_large.yaml"):
        config = parse_train_config(["--config", str(REPO / "configs" / name)])
        assert config.crop_samples > 0 and config.learning_rate > 0


def test_half_written_checkpoints_are_never_resumed(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "checkpoint_2").mkdir(parents=True)  # killed before its state file was written
    (root / ".staging-checkpoint_3").mkdir()
    (root / "checkpoint_1").mkdir()
    (root / "checkpoint_1" / "training_state.json").write_text("{}")
    assert resolve_resume_path(tmp_path, "latest") == root / "checkpoint_1"
    shutil.rmtree(root / "checkpoint_1")
    assert resolve_resume_path(tmp_path, "latest") is None
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume_path(tmp_path, str(root / "checkpoint_2"))
