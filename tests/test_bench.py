"""The benches run in their tiny CPU shape, so they do not rot. Times are printed by the benches, never asserted here;
what is asserted is what the benches compute besides time (shapes of the tables, the correctness checks)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import bench_experts, bench_inference, bench_long_audio
from bench.common import backbone_config, build_molex
from modeling_molex.routing_state import experts_disabled


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_gpu_runs_on_cpu_in_the_tiny_shape_and_its_correctness_checks_pass(tmp_path):
    report_path = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "bench.bench_gpu", "--device", "cpu", "--quick", "--json", str(report_path)]
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["shape"] == "tiny"
    cells = {(row["precision"], row["batch"], row["model"]) for row in report["inference"]}
    assert len(cells) == 2 * 2 * 4  # bf16/fp32 x two batch sizes x four models
    assert all(row["clips_per_s"] > 0 and row["real_time_factor"] > 0 for row in report["inference"])
    assert [row["mode"] for row in report["training"]] == [
        "full fine-tuning",
        "PEFT LoRA r8",
        "MoLEx E8 k2 r8",
        "MoLEx E8 k2 r8 + checkpointing",
    ]
    trainable = {row["mode"]: row["trainable"] for row in report["training"]}
    assert trainable["PEFT LoRA r8"] < trainable["full fine-tuning"]
    assert trainable["MoLEx E8 k2 r8"] == trainable["MoLEx E8 k2 r8 + checkpointing"]
    correctness = report["correctness"]
    assert correctness["reload_ok"], correctness
    assert set(correctness["reload_max_abs_diff"]) == {"from_pretrained", "remote code"}
    assert correctness["bf16_ok"], correctness
    assert "| bf16 | 1 | frozen backbone |" in completed.stdout


def test_bench_inference_compares_every_model_against_a_backbone_returning_all_hidden_states(capsys):
    models = bench_inference.build_models("tiny", ["utterance"])
    assert set(models) == {
        "frozen backbone",
        "MoLEx E8 k2 r8, utterance routing",
        "PEFT LoRA r8",
        "PEFT LoRA r16",
    }
    audio = torch.randn(1, 4000)
    outputs = bench_inference.forward_call(models["frozen backbone"], audio, torch.ones_like(audio).long())()
    assert len(outputs.hidden_states) == 3  # equal footing: the baseline returns every hidden state too
    bench_inference.main(["--shape", "tiny", "--rounds", "1", "--threads", "1", "--seconds", "0.25"])
    table = capsys.readouterr().out
    assert table.count("| 1 | cpu |") == 4


def test_saved_activation_bytes_counts_what_backward_keeps_and_not_the_weights():
    linear = torch.nn.Linear(64, 64)
    x = torch.randn(10, 64, requires_grad=True)
    # backward of x @ W^T keeps x (for W's gradient) and W (for x's gradient); only x is an activation
    assert bench_experts.saved_activation_bytes(linear, lambda: linear(x).sum()) == 10 * 64 * 4


def test_bench_experts_prints_one_row_per_expert_count(capsys):
    report = bench_experts.main(
        ["--shape", "tiny", "--experts", "2", "4", "--rounds", "1", "--train_rounds", "1", "--seconds", "0.25"]
    )
    assert set(report["inference"]["utterance"]) == {2, 4}
    states = {e: report["training"][e][-1] for e in (2, 4)}
    assert states[4] > states[2]  # twice the experts: more trainable state
    assert capsys.readouterr().out.count("\n| 4 |") == 1


def test_bench_molex_builder_gives_the_experts_a_non_zero_delta():
    model = build_molex(backbone_config("tiny"), num_experts=4).eval()
    audio = torch.randn(1, 4000)
    with torch.inference_mode():
        with_experts = model(audio).logits
        with experts_disabled():
            without = model(audio).logits
    assert not torch.allclose(with_experts, without)


@pytest.mark.slow
def test_bench_long_audio_scores_each_length_in_its_own_process_and_sweeps_batch_sizes(capsys):
    report = bench_long_audio.main(
        [
            "--shape",
            "small",
            "--threads",
            "1",
            "--minutes",
            "0.1",
            "--sweep",
            "1",
            "2",
            "--sweep_minutes",
            "0.1",
            "--rounds",
            "1",
        ]
    )
    (row,) = report["lengths"]
    assert row["windows"] == 2  # 6 s of audio: windows at 0 s and at 6 - 4.04 s
    assert row["peak_rss_gib"] > 0 and row["wall_s_per_audio_hour"] > 0
    assert set(report["sweep"]) == {1, 2}
    assert "| 0.1 | 2 |" in capsys.readouterr().out


@pytest.mark.slow  # one subprocess per stream length (~8 s): keeps `-m "not slow"` under a minute
def test_bench_streaming_times_windows_and_measures_each_length_in_its_own_process(capsys):
    from bench import bench_streaming

    report = bench_streaming.main(
        [
            "--models",
            "ssl-tiny",
            "--threads",
            "1",
            "--seconds",
            "4",
            "--memory_model",
            "ssl-tiny",
            "--memory_minutes",
            "0.1",
            "0.2",
        ]
    )
    (row,) = report["timing"]
    assert row["windows"] == 3  # 2 s windows every 1 s in 4 s: at 0, 1 and 2 s (the one at 2 s ends the stream)
    assert row["real_time_factor"] > 0 and row["latency_p95_ms"] >= row["latency_p50_ms"] > 0
    assert [memory["windows"] for memory in report["memory"]] == [
        9,
        15,
    ]  # 6 s and 12 s after 4 s of warm-up: a window every 1 s
    assert "memory ssl-tiny: 0.2 min stream" in capsys.readouterr().out
