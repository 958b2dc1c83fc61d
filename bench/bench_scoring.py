"""Files per second of `molex-score` on 1 and 2 processes (CPU), for the main job's model shape.

    python -m bench.bench_scoring [--clips 100] [--rounds 3] [--json report.json] [--quick]

The model is the main job's: MoLEx E8 top-2 r8 (utterance routing, block routers, 2 s windows) on the shipped SSL
encoder `training/encoders/molex_ssl_tiny` (`from_backbone`, LoRA B made non-zero as after training), saved to a
temporary folder. The clips are generated tone + noise, 2 to 6 s at 16 kHz (seeded). Each round runs every setting
once as a fresh command, in a rotating order (the drift of a shared machine hits all alike):

- `1 process x 1 thread` and `1 process x 2 threads`: `python -m training.score_cli` (OMP_NUM_THREADS = threads);
- `2 processes x 1 thread`: `accelerate launch --multi_gpu --num_processes 2 -m training.score_cli` (on CPU,
  `--cpu --num_processes 2` starts one process).

Reported per setting: the scoring phase's files/s as molex-score prints it (from the first file decoded to the
merged output and errors file: imports, model loading and process start-up excluded), the whole command's wall time
(all of those included), and the median over rounds of the per-round ratio of scoring-phase files/s to
`1 process x 2 threads` (above 1: faster).
"""

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from bench.common import cpu_name, nonzero_lora_b
from modeling_molex import MoLExAdapterConfig, MoLExForAudioClassification


ROOT = Path(__file__).resolve().parent.parent
ENCODER = ROOT / "training" / "encoders" / "molex_ssl_tiny"
SETTINGS = {"1 process x 1 thread": (1, 1), "1 process x 2 threads": (1, 2), "2 processes x 1 thread": (2, 1)}
BASELINE = "1 process x 2 threads"
SUMMARY = re.compile(r"scored (\d+) of (\d+) files into .* in ([0-9.]+) s \(([0-9.]+) files/s\)")


def save_main_job_model(folder: Path) -> Path:
    torch.manual_seed(0)
    adapter = MoLExAdapterConfig(num_experts=8, top_k=2, r=8, lora_alpha=16, router_granularity="utterance",
                                 router_scope="block")  # fmt: skip
    model = MoLExForAudioClassification.from_backbone(str(ENCODER), adapter=adapter, crop_samples=32_000)
    nonzero_lora_b(model).save_pretrained(folder)
    return folder


def write_clips(folder: Path, count: int, seed: int = 0) -> float:
    """`count` clips of 2-6 s; returns their total duration in seconds."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    total = 0.0
    for index in range(count):
        seconds = float(rng.uniform(2.0, 6.0))
        t = np.arange(int(seconds * 16_000)) / 16_000
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(folder / f"clip_{index:04d}.wav", wave, 16_000, subtype="PCM_16")
        total += seconds
    return total


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def command_for(processes: int, clips: Path, model: Path, output: Path) -> list[str]:
    cli = ["-m", "training.score_cli", str(clips), "--model", str(model), "--output", str(output), "--device", "cpu"]
    if processes == 1:
        return [sys.executable, *cli]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
            str(free_port()), *cli]  # fmt: skip


def run_once(processes: int, threads: int, clips: Path, model: Path, output: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": "lo", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error", "PYTHONPATH": str(ROOT)}  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command_for(processes, clips, model, output), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)  # fmt: skip
    wall = time.perf_counter() - start
    match = SUMMARY.search(done.stderr)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"{processes} x {threads} failed ({done.returncode}): {done.stderr[-2000:]}")
    if match.group(1) != match.group(2):
        raise RuntimeError(f"only {match.group(1)} of {match.group(2)} files were scored")
    output.unlink()
    return {"scoring_s": float(match.group(3)), "files_per_s": float(match.group(4)), "wall_s": wall}


def bench(clip_count: int, rounds: int) -> dict:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="molex-bench-scoring-") as folder:
        root = Path(folder)
        model = save_main_job_model(root / "model")
        audio_seconds = write_clips(root / "clips", clip_count)
        names = list(SETTINGS)
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for round_index in range(rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                runs[name].append(run_once(*SETTINGS[name], root / "clips", model, root / f"{round_index}.tsv"))
    rows = []
    for name, results in runs.items():
        ratios = [r["files_per_s"] / b["files_per_s"] for r, b in zip(results, runs[BASELINE], strict=True)]
        rows.append({
            "setting": name,
            "files_per_s": statistics.median(r["files_per_s"] for r in results),
            "scoring_s": statistics.median(r["scoring_s"] for r in results),
            "wall_s": statistics.median(r["wall_s"] for r in results),
            "speed_ratio_to_baseline": statistics.median(ratios),
            "ratio_range": [min(ratios), max(ratios)],
        })  # fmt: skip
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]  # 1-minute load average before and after
    return {"cpu": cpu_name(), "load_average": load, "clips": clip_count, "audio_seconds": audio_seconds,
            "rounds": rounds, "rows": rows}  # fmt: skip


def print_table(report: dict) -> None:
    print(f"molex-score, main job's model (SSL tiny encoder, E8 k2 r8, 2 s windows), {report['clips']} clips "
          f"({report['audio_seconds']:.0f} s of audio), median of {report['rounds']} interleaved rounds; "
          f"{report['cpu']}, load average {report['load_average'][0]} before, {report['load_average'][1]} after")  # fmt: skip
    print("| setting | files/s (scoring) | scoring s | command wall s | files/s vs 1 process x 2 threads |")
    print("|---|---|---|---|---|")
    for row in report["rows"]:
        low, high = row["ratio_range"]
        print(f"| {row['setting']} | {row['files_per_s']:.1f} | {row['scoring_s']:.2f} | {row['wall_s']:.1f} | "
              f"{row['speed_ratio_to_baseline']:.2f} ({low:.2f}-{high:.2f}) |")  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="6 clips, 1 round (the test's shape)")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    report = bench(6, 1) if args.quick else bench(args.clips, args.rounds)
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
