"""Does the data pipeline keep up at ASVspoof 5 scale? Protocol loading time and memory, then collator clips/s.

1. Load. A synthetic `ASVspoof5.train.tsv` of 182,357 rows (the real train count) in the release format, each row
   a symlink in `flac_T/` to one of a few real FLAC files, is read by `load_asvspoof5` in a fresh process:
   wall time, the process's peak RSS growth, and the Python heap the result keeps alive (`tracemalloc`, a second
   run: Arrow buffers live outside the Python heap, so a loader that kept per-row dicts would show up here).
2. Collate. `DataLoader(batch_size=16, collate_fn=AudioCollator(train=True))` over that split, default
   `ClipPolicy` (64,600-sample = 4.04 s random crops, repeat padding, normalisation), with 0, 1 and 2 workers:
   clips/s after the first batch (worker start-up excluded), so per-worker throughput is clips/s / workers.
3. Feeding a GPU. Workers needed = ceil(batch × seconds per clip per worker / GPU step time). The GPU step time of
   XLS-R MoLEx at batch 16 × 4 s is not measured on this machine (no GPU): the table gives the workers needed for
   a range of step times instead.

    python -m bench.bench_loader [--rows 182357] [--real-files 4] [--seconds 12] [--batches 12]
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf


ASVSPOOF5_TRAIN_ROWS = 182_357
ATTACKS = [f"A{i:02d}" for i in range(1, 9)]  # the train split's attacks (asvspoof5.md §1)
BATCH, CROP = 16, 64_600


def write_clip(path: Path, seconds: float, sampling_rate: int = 16_000, seed: int = 0) -> None:
    """Speech-like signal: five harmonics of a wobbling pitch plus noise, 16-bit FLAC."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    phase = 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 0.5 * t)) / sampling_rate
    wave = sum(0.2 / k * np.sin(k * phase) for k in range(1, 6)) + 0.01 * rng.standard_normal(t.size)
    sf.write(path, wave, sampling_rate, subtype="PCM_16")


def write_asvspoof5_scale(root: str | os.PathLike, rows: int, real_files: int = 4, seconds: float = 12.0) -> Path:
    """`root/flac_T/` with `rows` symlinks to `real_files` real clips, and `root/ASVspoof5.train.tsv` listing them in
    the release's 10-column format (about 10 % bona fide, attacks A01-A08, some coded rows). Returns `root`."""
    root = Path(root)
    (root / "real").mkdir(parents=True, exist_ok=True)
    (root / "flac_T").mkdir(exist_ok=True)
    sources = []
    for i in range(real_files):
        write_clip(root / "real" / f"clip{i}.flac", seconds * (0.75 + 0.5 * i / max(1, real_files - 1)), seed=i)
        sources.append(os.path.join("..", "real", f"clip{i}.flac"))  # relative links: the tree can move
    lines = []
    for i in range(rows):
        utt = f"T_{i:010d}"
        os.symlink(sources[i % real_files], root / "flac_T" / f"{utt}.flac")
        speaker, gender = f"T_{i % 400:04d}", "FM"[i % 2]
        if i % 10 == 0:
            lines.append(f"{speaker} {utt} {gender} - - - - bonafide bonafide -")
        else:
            codec = f"C{i % 11 + 1:02d} {i % 3 + 1} T_{i - 1:010d}" if i % 7 == 0 else "- - -"
            lines.append(f"{speaker} {utt} {gender} {codec} AC{i % 3 + 1} {ATTACKS[i % 8]} spoof -")
    (root / "ASVspoof5.train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


_LOAD_CHILD = """
import gc, json, resource, sys, time, tracemalloc
from training.data.loaders import load_asvspoof5
root, trace = sys.argv[1], sys.argv[2] == "trace"
gc.collect()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if trace:
    tracemalloc.start()
start = time.perf_counter()
data = load_asvspoof5(root, splits=("train",))["train"]
seconds = time.perf_counter() - start
gc.collect()
result = {"seconds": seconds, "rows": len(data), "arrow_mib": data.data.nbytes / 2**20,
          "table": type(data.data.table).__module__ + "." + type(data.data.table).__name__}
if trace:
    kept, peak = tracemalloc.get_traced_memory()
    result.update(python_kept_mib=kept / 2**20, python_peak_mib=peak / 2**20)
else:
    result["peak_rss_growth_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print("RESULT" + json.dumps(result))
"""


def measure_load(root: Path, trace: bool) -> dict:
    """`load_asvspoof5` in a fresh process (so peak RSS belongs to this load alone)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    completed = subprocess.run(
        [sys.executable, "-c", _LOAD_CHILD, str(root), "trace" if trace else "plain"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line.removeprefix("RESULT"))


def collate_speed(dataset, workers: int, batches: int) -> float:
    """Clips/s over `batches` batches after the first one (worker start-up and first decode excluded)."""
    import torch

    from training.data.loaders import AudioCollator

    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        collate_fn=AudioCollator(train=True),
        generator=torch.Generator().manual_seed(0),
    )
    iterator = iter(loader)
    next(iterator)
    start, clips = time.perf_counter(), 0
    for _ in range(batches):
        batch = next(iterator)
        assert batch["input_values"].shape == (BATCH, CROP)
        clips += BATCH
    return clips / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=ASVSPOOF5_TRAIN_ROWS)
    parser.add_argument("--real-files", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=12.0, help="mean real-clip length (ASVspoof 5: ~12 s)")
    parser.add_argument("--batches", type=int, default=12, help="timed batches of 16 per worker setting")
    args = parser.parse_args()
    import torch

    from training.data.loaders import load_asvspoof5

    torch.set_num_threads(1)
    print(f"{os.cpu_count()} CPUs; torch threads 1; {args.rows:,} rows -> {args.real_files} real clips")
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        start = time.perf_counter()
        root = write_asvspoof5_scale(tmp, args.rows, args.real_files, args.seconds)
        print(f"wrote protocol + {args.rows:,} symlinks in {time.perf_counter() - start:.1f} s")
        plain, traced = measure_load(root, trace=False), measure_load(root, trace=True)
        print("\n| rows | load_asvspoof5 (s) | peak RSS growth (MiB) | Arrow table (MiB) | Python heap kept (MiB) |")
        print("|---|---|---|---|---|")
        print(
            f"| {plain['rows']:,} | {plain['seconds']:.2f} | {plain['peak_rss_growth_mib']:.0f} | "
            f"{plain['arrow_mib']:.1f} | {traced['python_kept_mib']:.2f} (peak {traced['python_peak_mib']:.0f}) |"
        )
        print(f"table class: {plain['table']}")
        dataset = load_asvspoof5(root, splits=("train",))["train"]
        print(f"\n| workers | clips/s | clips/s per worker | ms per clip per worker |   (batch {BATCH}, 4.04 s crops)")
        print("|---|---|---|---|")
        speeds = {}
        for workers in (0, 1, 2):
            speeds[workers] = collate_speed(dataset, workers, args.batches)
            per_worker = speeds[workers] / max(1, workers)
            print(f"| {workers} | {speeds[workers]:.1f} | {per_worker:.1f} | {1000 / per_worker:.1f} |")
    per_clip = 1 / speeds[0]  # seconds of one core per clip, in-process (no IPC)
    print(f"\nworkers to feed one GPU step of batch {BATCH} = ceil({BATCH} x {per_clip * 1000:.1f} ms / step time)")
    print("| GPU step (s) | workers |\n|---|---|")
    for step in (0.1, 0.2, 0.3, 0.5, 1.0):
        print(f"| {step} | {math.ceil(BATCH * per_clip / step)} |")


if __name__ == "__main__":
    main()
