"""Long audio through the one scoring path (`model.score_waveform`): compute per audio hour and peak memory for 1, 10
and 60 minutes, and the window batch size that is fastest on this machine.

    python -m bench.bench_long_audio [--shape small] [--minutes 1 10 60] [--batch_size 8] [--threads 2]
                                     [--sweep 1 2 4 8 16 32] [--sweep_minutes 1] [--rounds 3]

Lengths: each runs in its own process (so peak RSS is that run's): build a random-weight MoLEx model (E8 k2 r8 on the
six projections), make the audio (Gaussian noise at -20 dBFS, 16 kHz, so no resampling and no silence flag), then
score it once with `score_waveform` (4.04 s windows every 2.02 s, `--batch_size` windows per forward pass). Reported:
wall and CPU seconds, wall seconds per audio hour, peak RSS, and the RSS growth over the process before the audio was
made (audio + scoring). Both should grow linearly with the length: per-window work is constant and the windows are
views of the clip.
Sweep: one process, the same `--sweep_minutes` clip scored with each batch size in rotating order over `--rounds`
rounds; the median wall time per audio hour per batch size, and its ratio to the fastest.
`--shape wav2vec2-base` gives realistic absolute times; the default `small` shape (4 blocks of 256) makes 60 minutes
fit in a few minutes on 2 cores. The machine may be shared: the header says so.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from bench.common import backbone_config, build_molex, cpu_name


SAMPLING_RATE = 16_000


def rss_gib(field: str = "VmRSS") -> float:
    """Resident memory of this process from /proc/self/status (VmRSS now, VmHWM peak), in GiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20
    raise RuntimeError(f"{field} not in /proc/self/status")


def noise(minutes: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(int(minutes * 60 * SAMPLING_RATE), generator=generator) * 0.1  # about -20 dBFS


def build_model(shape: str):
    torch.manual_seed(0)
    return build_molex(backbone_config(shape)).eval()


def score_once(model, wave: torch.Tensor, batch_size: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, number of windows) of one `score_waveform` call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = model.score_waveform(wave.numpy(), SAMPLING_RATE, batch_size=batch_size, signatures=None)
    return time.perf_counter() - wall, time.process_time() - cpu, len(result.window_scores)


def run_length(shape: str, minutes: float, batch_size: int) -> dict:
    model = build_model(shape)
    model.score_waveform(noise(0.1, seed=1).numpy(), SAMPLING_RATE, batch_size=batch_size, signatures=None)  # warm
    before = rss_gib()
    wave = noise(minutes)
    wall, cpu, windows = score_once(model, wave, batch_size)
    return {
        "minutes": minutes,
        "windows": windows,
        "wall_s": wall,
        "cpu_s": cpu,
        "wall_s_per_audio_hour": wall * 60 / minutes,
        "cpu_s_per_audio_hour": cpu * 60 / minutes,
        "peak_rss_gib": rss_gib("VmHWM"),
        "growth_gib": rss_gib("VmHWM") - before,
    }


def batch_sweep(shape: str, minutes: float, batch_sizes: list[int], rounds: int) -> dict[int, tuple[float, float]]:
    """Median (wall, CPU) seconds per audio hour of each batch size, interleaved in rotating order."""
    model = build_model(shape)
    wave = noise(minutes)
    times: dict[int, list[tuple[float, float]]] = {size: [] for size in batch_sizes}
    score_once(model, noise(0.1, seed=1), batch_sizes[0])  # warm-up
    for round_index in range(rounds):
        shift = round_index % len(batch_sizes)
        for size in batch_sizes[shift:] + batch_sizes[:shift]:
            wall, cpu, _ = score_once(model, wave, size)
            times[size].append((wall * 60 / minutes, cpu * 60 / minutes))
    return {
        size: (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
        for size, values in times.items()
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="small", help="backbone shape (bench/common.py SHAPES)")
    parser.add_argument("--minutes", type=float, nargs="*", default=[1, 10, 60])
    parser.add_argument("--batch_size", type=int, default=8, help="window batch size of the length runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sweep", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--sweep_minutes", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker is not None:
        print("RESULT" + json.dumps(run_length(args.shape, args.worker, args.batch_size)))
        return {}

    lengths = []
    for minutes in args.minutes:
        command = [sys.executable, "-m", "bench.bench_long_audio", "--worker", str(minutes), "--shape", args.shape]
        command += ["--batch_size", str(args.batch_size), "--threads", str(args.threads)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
        completed = subprocess.run(command, capture_output=True, text=True, env=env)
        if completed.returncode != 0:
            raise RuntimeError(f"{minutes} min run failed:\n{completed.stderr[-3000:]}")
        line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULT"))
        lengths.append(json.loads(line.removeprefix("RESULT")))
        print(f"  {minutes:g} min: {lengths[-1]}", file=sys.stderr, flush=True)
    sweep = batch_sweep(args.shape, args.sweep_minutes, args.sweep, args.rounds) if args.sweep else {}

    print(
        f"{args.shape} shape, MoLEx E8 k2 r8, score_waveform (4.04 s windows, 2.02 s hop), {args.threads} threads, "
        f"{cpu_name()} (shared machine)"
    )
    if lengths:
        print(f"\nwindow batch size {args.batch_size}, each length in its own process:")
        print(
            "\n| audio (min) | windows | wall (s) | CPU (s) | wall s per audio hour | CPU s per audio hour | "
            "peak RSS (GiB) | RSS growth (GiB) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for row in lengths:
            print(
                f"| {row['minutes']:g} | {row['windows']} | {row['wall_s']:.1f} | {row['cpu_s']:.1f} | "
                f"{row['wall_s_per_audio_hour']:.0f} | {row['cpu_s_per_audio_hour']:.0f} | "
                f"{row['peak_rss_gib']:.2f} | {row['growth_gib']:.3f} |"
            )
    if sweep:
        best = min(wall for wall, _ in sweep.values())
        print(
            f"\nwindow batch size sweep, {args.sweep_minutes:g} min clip, median of {args.rounds} interleaved rounds:"
        )
        print("\n| window batch size | wall s per audio hour | vs fastest | CPU s per audio hour |")
        print("|---|---|---|---|")
        for size, (wall, cpu) in sweep.items():
            print(f"| {size} | {wall:.0f} | {wall / best:.2f}x | {cpu:.0f} |")
    return {"lengths": lengths, "sweep": sweep}


if __name__ == "__main__":
    main()
