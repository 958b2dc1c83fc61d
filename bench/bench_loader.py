"""How fast does the data pipeline feed training? Decode + resample + crop + normalise + collate, in clips per second.

Writes synthetic FLAC clips (16 kHz and 8 kHz sources) into a temp dir, loads them through `load_csv_dataset` and
`AudioCollator(train=True)` with the default `ClipPolicy` (64,600-sample random crop), and times full epochs of a
`DataLoader` with 0, 1 and 2 workers. The table compares that with what a CPU training step consumes:

    wav2vec2-base, LoRA on q/v, batch 4: 4.3 s per step ≈ 0.93 clips/s  (install_probe.md §4, quiet 2-core machine)
    XLS-R-300M-like, same setup:       12.6 s per step ≈ 0.32 clips/s

"CPU share" = main-process loader time per clip / training time per clip: the fraction of the cores the loader
takes away from the model when both share the same two cores.

    python -m bench.bench_loader [--clips 256] [--seconds 8] [--repeats 2]     (from the repository root)
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from training.data.loaders import AudioCollator, load_csv_dataset


TRAIN_SECONDS_PER_CLIP = {"wav2vec2-base": 4.3 / 4, "XLS-R-300M": 12.6 / 4}


def write_corpus(folder: Path, clips: int, seconds: float, sampling_rate: int, seed: int = 0) -> Path:
    """Speech-like signal: five harmonics of a wobbling pitch plus noise; lengths vary ±50 % around `seconds`."""
    rng = np.random.default_rng(seed)
    lines = ["path,label"]
    for i in range(clips):
        n = int(rng.uniform(0.5, 1.5) * seconds * sampling_rate)
        t = np.arange(n) / sampling_rate
        f0 = 120 + 30 * np.sin(2 * np.pi * 0.5 * t)
        phase = 2 * np.pi * np.cumsum(f0) / sampling_rate
        wave = sum(0.2 / k * np.sin(k * phase) for k in range(1, 6)) + 0.01 * rng.standard_normal(n)
        sf.write(folder / f"clip{i:04d}.flac", wave, sampling_rate, subtype="PCM_16")
        lines.append(f"clip{i:04d}.flac,{i % 2}")
    (folder / "list.csv").write_text("\n".join(lines) + "\n")
    return folder / "list.csv"


def clips_per_second(csv_path: Path, workers: int, repeats: int) -> float:
    """Best of `repeats` full epochs, worker start-up included (as in a real epoch without persistent workers)."""
    dataset = load_csv_dataset(csv_path, split="train")["train"]
    best = float("inf")
    for _ in range(repeats):
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=4, shuffle=True, num_workers=workers, collate_fn=AudioCollator(train=True)
        )
        start = time.perf_counter()
        for batch in loader:
            assert batch["input_values"].shape[1] == 64_600
        best = min(best, time.perf_counter() - start)
    return len(dataset) / best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=8.0, help="mean clip length (ASVspoof 5 averages ~12 s)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    need = {name: 1 / s for name, s in TRAIN_SECONDS_PER_CLIP.items()}
    print(f"{args.clips} clips, mean {args.seconds:g} s, crop 64,600 samples, batch 4, torch threads 1")
    print("training consumes: " + ", ".join(f"{name} {rate:.2f} clips/s" for name, rate in need.items()))
    print("| source | workers | clips/s | ms/clip | × wav2vec2-base need | × XLS-R need | CPU share (w2v2-base) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for rate in (16_000, 8_000):
            folder = Path(tmp) / f"sr{rate}"
            folder.mkdir()
            csv_path = write_corpus(folder, args.clips, args.seconds, rate)
            for workers in (0, 1, 2):
                speed = clips_per_second(csv_path, workers, args.repeats)
                # only the in-process run measures the loader's own CPU time per clip
                share = 100 / speed / TRAIN_SECONDS_PER_CLIP["wav2vec2-base"]
                share_text = f"{share:.1f} %" if workers == 0 else "–"
                print(
                    f"| {rate // 1000} kHz FLAC | {workers} | {speed:.1f} | {1000 / speed:.1f} | "
                    f"{speed / need['wav2vec2-base']:.0f}× | {speed / need['XLS-R-300M']:.0f}× | {share_text} |"
                )


if __name__ == "__main__":
    main()
