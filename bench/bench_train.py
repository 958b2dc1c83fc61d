"""Training step time and peak memory: MoLEx vs full fine-tuning (and PEFT LoRA), XLS-R-300M shape, random weights.

    python -m bench.bench_train [--rounds 2] [--steps 3] [--batch 4] [--seconds 4.04] [--threads 2] [--small]

Each mode runs in its own process (so peak RSS is that mode's), in rotating order over rounds; a process builds the
model, runs 1 warm-up step and `--steps` timed steps (forward + backward + AdamW on the trainable parameters) and
reports the median step time and its peak RSS. The table gives each mode's median over rounds and its ratio to full
fine-tuning (every parameter trainable, CNN feature encoder included, mean pooling + linear head).
`--small` uses a wav2vec2-base shape for a quick look.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from bench.common import SHAPES, SIX_PROJECTIONS


MODES = {
    "full fine-tuning": {},
    "PEFT LoRA r8 (6 proj)": {"lora": True},
    "MoLEx E8 k2 r8 (6 proj, all blocks)": {"molex": True},
    "MoLEx + activation checkpointing": {"molex": True, "checkpointing": True},
    "MoLEx, upper half of the blocks": {"molex": True, "upper_half": True},
    "MoLEx + checkpointing every 2nd block": {"molex": True, "checkpointing": True, "every_n_layers": 2},
    "MoLEx, upper half + checkpointing": {"molex": True, "upper_half": True, "checkpointing": True},
}
SIX = SIX_PROJECTIONS
XLSR_300M = SHAPES["xls-r-300m"]


def run_mode(mode: str, steps: int, batch: int, seconds: float, threads: int, small: bool) -> dict:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    options = MODES[mode]
    shape = {} if small else XLSR_300M
    config = Wav2Vec2Config(**shape, mask_time_prob=0.0, layerdrop=0.0)
    labels = torch.randint(0, 2, (batch,))
    audio = torch.randn(batch, int(seconds * 16000))
    if options.get("molex"):
        from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification

        layers = (
            list(range(config.num_hidden_layers // 2, config.num_hidden_layers)) if options.get("upper_half") else None
        )
        adapter = MoLExAdapterConfig(num_experts=8, top_k=2, r=8, target_modules=SIX, layers_to_transform=layers)
        model = MoLExForAudioClassification(MoLExConfig(backbone_config=config, adapter=adapter))
        if options.get("checkpointing"):
            model.activation_checkpointing_enable(every_n_layers=options.get("every_n_layers", 1))

        def loss_fn():
            return model(audio, labels=labels).loss
    else:
        backbone = Wav2Vec2Model(config)
        if options.get("lora"):
            from peft import LoraConfig, get_peft_model

            backbone = get_peft_model(backbone, LoraConfig(r=8, lora_alpha=16, target_modules=SIX))
        head = torch.nn.Linear(config.hidden_size, 2)
        model = torch.nn.ModuleList([backbone, head])

        def loss_fn():
            pooled = backbone(audio).last_hidden_state.mean(dim=1)
            return torch.nn.functional.cross_entropy(head(pooled), labels)

    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss_fn().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step > 0:  # step 0 is warm-up (allocations, optimizer state creation)
            times.append(time.perf_counter() - start)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"step_s": statistics.median(times), "peak_gib": peak_gib, "trainable": sum(p.numel() for p in trainable)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.04)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--modes", nargs="+", default=list(MODES))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_mode(args.worker, args.steps, args.batch, args.seconds, args.threads, args.small)))
        return
    results = {mode: [] for mode in args.modes}
    for round_index in range(args.rounds):
        shift = round_index % len(args.modes)
        for mode in args.modes[shift:] + args.modes[:shift]:
            command = [sys.executable, "-m", "bench.bench_train", "--worker", mode, "--steps", str(args.steps)]
            command += ["--batch", str(args.batch), "--seconds", str(args.seconds), "--threads", str(args.threads)]
            command += ["--small"] if args.small else []
            completed = subprocess.run(command, capture_output=True, text=True, check=True)
            results[mode].append(json.loads(completed.stdout.strip().splitlines()[-1]))
            print(f"round {round_index + 1}: {mode}: {results[mode][-1]}", file=sys.stderr, flush=True)
    shape = "wav2vec2-base" if args.small else "XLS-R-300M"
    print(
        f"{shape} shape, random weights, batch {args.batch} x {args.seconds:g} s, {args.threads} threads, CPU, "
        f"{args.rounds} rounds x {args.steps} steps"
    )
    print("| mode | trainable params | step (s) | step vs full FT | peak RSS (GiB) | memory vs full FT |")
    print("|---|---|---|---|---|---|")
    reference = args.modes[0]
    base_step = statistics.median(r["step_s"] for r in results[reference])
    base_memory = statistics.median(r["peak_gib"] for r in results[reference])
    for mode, runs in results.items():
        step = statistics.median(r["step_s"] for r in runs)
        memory = statistics.median(r["peak_gib"] for r in runs)
        print(
            f"| {mode} | {runs[0]['trainable']:,} | {step:.2f} | {step / base_step:.2f}x | {memory:.2f} | "
            f"{memory / base_memory:.2f}x |"
        )


if __name__ == "__main__":
    main()
