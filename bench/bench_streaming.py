"""Live scoring (`model.streaming_scorer`): real-time factor, the latency from a window's last sample to its verdict,
and the memory of a long stream against a short one.

    python -m bench.bench_streaming [--models main ssl-tiny whisper-base wav2vec2-base] [--threads 1 2] [--seconds 60]
                                    [--chunk_seconds 0.1] [--memory_model main] [--memory_minutes 1 60]

Models (random weights; only the shapes matter for time and memory):
- `main`: the main job's model (configs/tiny.yaml): Whisper tiny.en's encoder (4 blocks of 384, 80 mel bins) with
  E8 k2 r8 experts on its six projections, 2 s windows every 1 s.
- `ssl-tiny`: the main job's SSL variant (configs/tiny_ssl.yaml): the project's SSL encoder
  (training/encoders/molex_ssl_tiny, 4 blocks of 128), E8 k2 r8, 2 s windows every 1 s.
- `whisper-base`: the largest backbone shipped offline (Whisper base's encoder: 6 blocks of 512, 80 mel bins), E8 k2
  r8 on its six projections, 4.04 s windows every 2.02 s (the full-size configs' crop).
- `wav2vec2-base`: a larger backbone supported offline with random weights (12 blocks of 768, 94 M), 4.04 s windows.

Time: `--seconds` of noise at 16 kHz (no resampling, no silence flag) pushed in `--chunk_seconds` chunks as fast as
the stream takes them, after one warm-up window, at each `torch.set_num_threads` value. Real-time factor = wall
seconds / audio seconds (below 1: keeps up with a live microphone). Latency of a window = the wall time of the push
whose chunk held its last sample, i.e. from that sample's arrival to the verdict (the window's forward pass plus the
chunk's bookkeeping); with a real-time factor below 1 no window waits for an earlier one, so this is the live
latency. p50 and p95 over the windows.
Memory: each length in its own process (`--memory_model`, 1 thread, a fresh stream): peak RSS (VmHWM) and its growth
over the peak after its first two windows' worth, and the stream's per-window result arrays (`Timeline`).
The machine may be shared with other jobs: wall times are upper bounds; the header says what ran where.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, Wav2Vec2Config, WhisperConfig

from bench.bench_long_audio import rss_gib
from bench.common import SIX_PROJECTIONS, cpu_name, nonzero_lora_b
from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification


RATE = 16_000
MAIN_ENCODER = Path(__file__).resolve().parent.parent / "training" / "encoders" / "molex_ssl_tiny"
WHISPER_SIX = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def whisper_shape(width: int, blocks: int, heads: int) -> WhisperConfig:
    """A random Whisper of a released size (feed-forward 4x the width; a one-block decoder, which scoring never runs)."""
    return WhisperConfig(
        d_model=width, encoder_layers=blocks, encoder_attention_heads=heads, encoder_ffn_dim=4 * width,
        num_mel_bins=80, decoder_layers=1, decoder_attention_heads=heads, decoder_ffn_dim=4 * width,
    )  # fmt: skip


def backbone_and_crop(name: str):
    if name == "main":
        return whisper_shape(width=384, blocks=4, heads=6), 32_000, WHISPER_SIX  # tiny.en
    if name == "ssl-tiny":
        config = AutoConfig.from_pretrained(MAIN_ENCODER)
        config.layerdrop, config.apply_spec_augment = 0.0, False
        return config, 32_000, SIX_PROJECTIONS
    if name == "whisper-base":
        return whisper_shape(width=512, blocks=6, heads=8), 64_600, WHISPER_SIX  # base
    if name == "wav2vec2-base":
        return Wav2Vec2Config(mask_time_prob=0.0, layerdrop=0.0), 64_600, SIX_PROJECTIONS
    raise ValueError(f"unknown model {name!r}: main, ssl-tiny, whisper-base or wav2vec2-base")


def build(name: str) -> MoLExForAudioClassification:
    torch.manual_seed(0)
    backbone, crop, targets = backbone_and_crop(name)
    adapter = MoLExAdapterConfig(num_experts=8, top_k=2, r=8, lora_alpha=16, target_modules=targets)
    config = MoLExConfig(backbone_config=backbone, adapter=adapter, crop_samples=crop)
    return nonzero_lora_b(MoLExForAudioClassification(config)).eval()


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(np.float32)


def time_stream(model, seconds: float, chunk_seconds: float) -> dict:
    """Real-time factor and per-window latency (ms) of one stream of `seconds` of noise."""
    wave, chunk = noise(seconds), int(chunk_seconds * RATE)
    warm = model.streaming_scorer(RATE, signatures=None)
    warm.push(noise(model.config.crop_samples / RATE, seed=1))  # first forward pass: allocations, kernels
    stream = model.streaming_scorer(RATE, signatures=None)
    latencies, windows = [], 0
    start = time.perf_counter()
    for offset in range(0, wave.size, chunk):
        before = time.perf_counter()
        completed = stream.push(wave[offset : offset + chunk])
        if completed:
            latencies.append((time.perf_counter() - before) * 1000)  # every window of a chunk is out at once
            windows += len(completed)
    stream.finish()
    wall = time.perf_counter() - start
    latencies.sort()
    return {
        "real_time_factor": wall / seconds,
        "latency_p50_ms": statistics.median(latencies),
        "latency_p95_ms": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "windows": windows,
    }


def memory_run(name: str, minutes: float) -> dict:
    """In this process: stream `minutes` of noise in 0.5 s chunks; RSS peak and growth, timeline bytes."""
    torch.set_num_threads(1)
    model = build(name)
    stream = model.streaming_scorer(RATE, signatures=None)
    stream.push(noise(2 * model.config.crop_samples / RATE, seed=2))  # warm: windows scored, buffers allocated
    before = rss_gib("VmHWM")
    generator, chunk = np.random.default_rng(3), RATE // 2
    for _ in range(int(minutes * 120)):
        stream.push((0.1 * generator.standard_normal(chunk)).astype(np.float32))
    timeline_mb = stream._timeline.nbytes() / 2**20
    result = stream.finish()
    return {
        "minutes": minutes,
        "windows": len(result.window_scores),
        "peak_rss_mb": rss_gib("VmHWM") * 1024,
        "rss_growth_mb": (rss_gib("VmHWM") - before) * 1024,
        "timeline_mb": timeline_mb,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["main", "ssl-tiny", "whisper-base", "wav2vec2-base"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--chunk_seconds", type=float, default=0.1)
    parser.add_argument("--memory_model", default="main")
    parser.add_argument("--memory_minutes", nargs="*", type=float, default=[1.0, 60.0])
    parser.add_argument("--memory_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print("RESULT" + json.dumps(memory_run(args.memory_child[0], float(args.memory_child[1]))))
        return {}

    print(f"# {cpu_name()}; torch {torch.__version__}; {args.seconds:g} s streams, {args.chunk_seconds:g} s chunks")
    report = {"timing": [], "memory": []}
    for name in args.models:
        model = build(name)
        window = model.config.crop_samples / RATE
        for threads in args.threads:
            torch.set_num_threads(threads)
            row = {"model": name, "threads": threads, "window_s": window} | time_stream(
                model, args.seconds, args.chunk_seconds
            )
            report["timing"].append(row)
            print(
                f"{name:14s} threads {threads}  window {window:.2f} s  RTF {row['real_time_factor']:.3f}  "
                f"latency p50 {row['latency_p50_ms']:.0f} ms  p95 {row['latency_p95_ms']:.0f} ms  "
                f"({row['windows']} windows)",
                flush=True,
            )
    for minutes in args.memory_minutes:
        command = [sys.executable, "-m", "bench.bench_streaming", "--memory_child", args.memory_model, str(minutes)]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        row = json.loads(next(line for line in output.splitlines() if line.startswith("RESULT"))[6:])
        report["memory"].append(row)
        print(
            f"memory {args.memory_model}: {minutes:g} min stream, {row['windows']} windows: peak RSS "
            f"{row['peak_rss_mb']:.0f} MB, growth while streaming {row['rss_growth_mb']:.1f} MB, per-window results "
            f"{row['timeline_mb']:.2f} MB",
            flush=True,
        )
    return report


if __name__ == "__main__":
    main()
