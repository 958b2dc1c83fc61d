"""Inference cost of MoLEx vs the frozen backbone and vs PEFT LoRA r8 / r16, on a wav2vec2-base-shaped random model.

    python -m bench.bench_inference [--rounds 10] [--threads 1 2] [--seconds 2] [--batch 2] [--profile]

Equal footing: every model returns all hidden states (`output_hidden_states=True`), because the MoLEx head reads all
of them (weighted layer sum); a frozen backbone returning only its last state would be a cheaper baseline than the
one MoLEx is compared with. Each round runs every model once, in a rotating order, on the same batch; the table
reports the median over rounds of the per-round time ratios to the frozen backbone.
MoLEx: E=8 experts, top-2, rank 8, on q/k/v/out_proj + intermediate/output_dense of all blocks. PEFT LoRA: rank 8
and 16 on the same six projections. `--profile` prints the torch.profiler op table of MoLEx and of the backbone.
"""

import argparse
import time

import torch

from bench.common import (
    backbone_config,
    build_molex,
    build_peft_lora,
    cpu_name,
    interleaved_times,
    median_ratios,
)


BASELINE = "frozen backbone"


def build_models(shape: str, granularities: list[str]) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    config = backbone_config(shape)
    from transformers import Wav2Vec2Model

    frozen = Wav2Vec2Model(config).eval()
    models: dict[str, torch.nn.Module] = {BASELINE: frozen}
    for granularity in granularities:
        models[f"MoLEx E8 k2 r8, {granularity} routing"] = build_molex(config, frozen, granularity=granularity).eval()
    models["PEFT LoRA r8"] = build_peft_lora(frozen, 8).eval()
    models["PEFT LoRA r16"] = build_peft_lora(frozen, 16).eval()
    return models


def forward_call(model: torch.nn.Module, audio: torch.Tensor, mask: torch.Tensor):
    def run():
        with torch.inference_mode():
            return model(audio, attention_mask=mask, output_hidden_states=True)

    return run


def profile_table(run, label: str, rows: int = 15) -> str:
    """torch.profiler CPU op table (self CPU time) of three calls of `run`."""
    from torch.profiler import ProfilerActivity, profile

    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            run()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return f"### profile: {label} (3 calls)\n{table}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--shape", default="wav2vec2-base", help="backbone shape (bench/common.py SHAPES)")
    parser.add_argument("--granularity", nargs="+", choices=["utterance", "token"], default=["utterance"])
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler tables (first thread count)")
    parser.add_argument(
        "--clock",
        choices=["auto", "cpu", "wall"],
        default="auto",
        help="cpu: process CPU seconds (immune to waiting for a core on a shared machine); auto: cpu at 1 thread, "
        "wall otherwise (at 2+ threads CPU seconds would count OpenMP spin-waits)",
    )
    args = parser.parse_args(argv)

    models = build_models(args.shape, args.granularity)
    audio = torch.randn(args.batch, int(args.seconds * 16000))
    mask = torch.ones_like(audio, dtype=torch.long)
    runs = {name: forward_call(model, audio, mask) for name, model in models.items()}
    print(
        f"{args.shape} shape, batch {args.batch} x {args.seconds:g} s, {args.rounds} interleaved rounds, "
        f"all hidden states returned; {cpu_name()}"
    )
    print(f"| threads | clock | model | median time (s) | median ratio to {BASELINE} | ratio range |")
    print("|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        clock_name = args.clock if args.clock != "auto" else ("cpu" if threads == 1 else "wall")
        clock = time.process_time if clock_name == "cpu" else time.perf_counter
        times = interleaved_times(runs, args.rounds, clock=clock)
        for name, (ratio, low, high) in median_ratios(times, BASELINE).items():
            median_time = sorted(times[name])[len(times[name]) // 2]
            print(f"| {threads} | {clock_name} | {name} | {median_time:.3f} | {ratio:.3f} | {low:.3f}-{high:.3f} |")
    if args.profile:
        torch.set_num_threads(args.threads[0])
        molex_name = next(name for name in runs if name.startswith("MoLEx"))
        print(profile_table(runs[molex_name], molex_name))
        print(profile_table(runs[BASELINE], BASELINE))


if __name__ == "__main__":
    main()
