"""Seconds of compute per hour of audio for long input through the one scoring path (`model.score_waveform`).

    python -m bench.bench_long_audio [--model DIR_OR_REPO_ID] [--minutes 1 10 60] [--batch_size 8] [--threads 2]

Each length runs in its own process, so each peak RSS is that length's own. Without `--model` a MoLEx model is
built on the tiny random backbone the main job uses (`training.encoders.tiny_random`), with the default 4.04 s
windows every 2.02 s. Time and memory should grow linearly with the audio's length (attention spans one window).
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(model_dir: str, minutes: float, batch_size: int, threads: int) -> dict:
    """Score `minutes` of generated speech-like audio once (after a warm-up) in this process."""
    import numpy as np
    import torch
    from transformers import AutoModelForAudioClassification

    from training.encoders.tiny_random import generated_clip

    torch.set_num_threads(threads)
    model = AutoModelForAudioClassification.from_pretrained(model_dir, trust_remote_code=True).eval()
    rate = model.config.sampling_rate
    block = generated_clip(10.0, rate, seed=0)
    wave = np.resize(block, int(minutes * 60 * rate))
    model.score_waveform(wave[: 10 * rate], rate, batch_size=batch_size)  # warm-up
    start = time.perf_counter()
    result = model.score_waveform(wave, rate, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return {
        "minutes": minutes,
        "windows": len(result.window_scores),
        "seconds": round(seconds, 2),
        "seconds_per_audio_hour": round(seconds * 60 / minutes, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def build_tiny_model(folder: Path) -> str:
    import torch

    from modeling_molex import MoLExAdapterConfig, MoLExForAudioClassification
    from training.encoders.tiny_random import build_tiny_backbone

    backbone = build_tiny_backbone(str(folder / "backbone"), seed=0)
    torch.manual_seed(0)
    adapter = MoLExAdapterConfig(num_experts=8, top_k=2, r=8, lora_alpha=16)
    MoLExForAudioClassification.from_backbone(backbone, adapter=adapter).save_pretrained(folder / "model")
    return str(folder / "model")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="MoLEx folder or Hub id (default: a tiny random model)")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0, 60.0])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: measure one length here
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.model, args.minutes[0], args.batch_size, args.threads)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or build_tiny_model(Path(scratch))
        print("| audio (min) | windows | seconds | s per audio hour | peak RSS (MB) |\n|---|---|---|---|---|")
        for minutes in args.minutes:
            command = [sys.executable, "-m", "bench.bench_long_audio", "--one", "--model", model, "--minutes",
                       str(minutes), "--batch_size", str(args.batch_size), "--threads", str(args.threads)]  # fmt: skip
            row = json.loads(
                subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
            )
            print(f"| {row['minutes']:g} | {row['windows']} | {row['seconds']} | {row['seconds_per_audio_hour']} | "
                  f"{row['peak_rss_mb']} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
