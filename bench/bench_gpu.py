"""GPU benchmark: inference throughput, training step time and peak memory, and CUDA correctness, in one run.

    python -m bench.bench_gpu [--quick] [--device cuda] [--shape xls-r-300m] [--json OUT.json]

XLS-R-300M shape with random weights, 4 s clips. Prints three tables (markdown):
- inference: clips/s, real-time factor (compute seconds per audio second) and the ratio to the frozen backbone, for
  the frozen backbone, PEFT LoRA r8, MoLEx E8 k2 with utterance and with token routing, at batch 1 and 32, in bf16
  autocast and fp32. The four models are timed interleaved (A, B, C, D, B, C, D, A, ...) and every model returns all
  hidden states, as the MoLEx head reads them;
- training at batch 16: step time (forward + backward + AdamW) and peak memory (`torch.cuda.max_memory_allocated`,
  weights + gradients + optimizer state + activations) for full fine-tuning, PEFT LoRA r8, MoLEx E8 k2 r8 and MoLEx
  with activation checkpointing. Modes run one after the other, each alone on the device, over rotating rounds;
- correctness on the device: bf16-autocast logits vs fp32 logits of the same MoLEx model (relative tolerance), and
  save_pretrained -> from_pretrained and -> AutoModel with trust_remote_code give the same logits as the saved model.
Targets (issue 12): MoLEx inference <= 1.10x the frozen backbone at batch 32 in bf16; a MoLEx training step
<= 0.7x the time and <= 0.5x the peak memory of full fine-tuning.

Without CUDA it runs on the CPU in the tiny test shape (batch 2 instead of 32 and 16, 0.5 s clips, no memory
figures): that is what the test runs so the script does not rot. Numbers are never asserted in tests.
`--quick` takes fewer rounds and steps; the full run is meant to fit in 8 minutes (estimated: not yet run on a GPU).
"""

import argparse
import contextlib
import gc
import json
import statistics
import sys
import tempfile
import time

import torch
from transformers import Wav2Vec2Model

from bench.common import (
    SIX_PROJECTIONS,
    backbone_config,
    build_molex,
    build_peft_lora,
    cpu_name,
    interleaved_times,
    median_ratios,
)


BASELINE = "frozen backbone"
TRAIN_MODES = ["full fine-tuning", "PEFT LoRA r8", "MoLEx E8 k2 r8", "MoLEx E8 k2 r8 + checkpointing"]
BF16_RELATIVE_TOLERANCE = 0.05  # max |logit difference| / max |fp32 logit|


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def inference_models(config, device: torch.device) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    frozen = Wav2Vec2Model(config).eval()
    models = {
        BASELINE: frozen,
        "PEFT LoRA r8": build_peft_lora(frozen, 8).eval(),
        "MoLEx E8 k2, utterance routing": build_molex(config, frozen, granularity="utterance").eval(),
        "MoLEx E8 k2, token routing": build_molex(config, frozen, granularity="token").eval(),
    }
    return {name: model.to(device) for name, model in models.items()}


def bench_inference(config, device, batches, precisions, seconds, rounds) -> list[dict]:
    models = inference_models(config, device)
    rows = []
    for precision in precisions:
        for batch in batches:
            audio = torch.randn(batch, int(seconds * 16000), device=device)

            def make_run(model, audio=audio, precision=precision):
                def run():
                    with torch.inference_mode(), autocast(device, precision):
                        return model(audio, output_hidden_states=True)

                return run

            runs = {name: make_run(model) for name, model in models.items()}
            times = interleaved_times(runs, rounds, warmup=2, sync=lambda: synchronize(device))
            for name, (ratio, low, high) in median_ratios(times, BASELINE).items():
                step = statistics.median(times[name])
                rows.append(
                    {
                        "precision": precision,
                        "batch": batch,
                        "model": name,
                        "clips_per_s": batch / step,
                        "real_time_factor": step / (batch * seconds),
                        "ratio": ratio,
                        "ratio_range": [low, high],
                    }
                )
    del models
    _free(device)
    return rows


def training_setup(mode: str, config, device: torch.device, batch: int, seconds: float):
    """(loss function, trainable parameters) of one training mode, on `device`."""
    torch.manual_seed(0)
    audio = torch.randn(batch, int(seconds * 16000), device=device)
    labels = torch.randint(0, 2, (batch,), device=device)
    if mode.startswith("MoLEx"):
        model = build_molex(config).to(device).train()
        if mode.endswith("checkpointing"):
            model.activation_checkpointing_enable()

        def loss_fn():
            return model(audio, labels=labels).loss
    else:
        backbone = Wav2Vec2Model(config)
        if mode.startswith("PEFT"):
            from peft import LoraConfig, get_peft_model

            backbone = get_peft_model(backbone, LoraConfig(r=8, lora_alpha=16, target_modules=SIX_PROJECTIONS))
        head = torch.nn.Linear(config.hidden_size, 2)
        model = torch.nn.ModuleList([backbone, head]).to(device).train()

        def loss_fn():
            pooled = backbone(audio).last_hidden_state.mean(dim=1)
            return torch.nn.functional.cross_entropy(head(pooled).float(), labels)

    return loss_fn, [p for p in model.parameters() if p.requires_grad]


def train_mode(mode: str, config, device, batch, seconds, steps, precision: str) -> dict:
    loss_fn, trainable = training_setup(mode, config, device, batch, seconds)
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(steps + 1):
        synchronize(device)
        start = time.perf_counter()
        with autocast(device, precision):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if step > 0:  # step 0: optimizer state creation, kernel selection
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    result = {"step_s": statistics.median(times), "peak_gib": peak, "trainable": sum(p.numel() for p in trainable)}
    del loss_fn, trainable, optimizer
    _free(device)
    return result


def bench_training(config, device, batch, seconds, steps, rounds, precision) -> list[dict]:
    results: dict[str, list[dict]] = {mode: [] for mode in TRAIN_MODES}
    for round_index in range(rounds):
        shift = round_index % len(TRAIN_MODES)
        for mode in TRAIN_MODES[shift:] + TRAIN_MODES[:shift]:
            results[mode].append(train_mode(mode, config, device, batch, seconds, steps, precision))
            print(f"  training round {round_index + 1}: {mode}: {results[mode][-1]}", file=sys.stderr, flush=True)
    base_step = statistics.median(r["step_s"] for r in results[TRAIN_MODES[0]])
    rows = []
    for mode, runs in results.items():
        step = statistics.median(r["step_s"] for r in runs)
        peak = None if runs[0]["peak_gib"] is None else max(r["peak_gib"] for r in runs)
        rows.append(
            {
                "mode": mode,
                "trainable": runs[0]["trainable"],
                "step_s": step,
                "step_ratio": step / base_step,
                "peak_gib": peak,
            }
        )
    base_peak = rows[0]["peak_gib"]
    for row in rows:
        row["memory_ratio"] = None if base_peak is None else row["peak_gib"] / base_peak
    return rows


def correctness_checks(config, device, seconds) -> dict:
    """bf16 vs fp32 logits, and save/load/remote-code logits, of one MoLEx model on `device`."""
    from transformers import AutoModelForAudioClassification

    from modeling_molex import MoLExForAudioClassification

    torch.manual_seed(0)
    model = build_molex(config).to(device).eval()
    audio = torch.randn(4, int(seconds * 16000), device=device)
    with torch.inference_mode():
        fp32 = model(audio).logits.float()
        with autocast(device, "bf16"):
            bf16 = model(audio).logits.float()
    bf16_error = float((bf16 - fp32).abs().max() / fp32.abs().max().clamp(min=1e-6))
    differences = {}
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        loaders = {
            "from_pretrained": lambda: MoLExForAudioClassification.from_pretrained(folder),
            "remote code": lambda: AutoModelForAudioClassification.from_pretrained(folder, trust_remote_code=True),
        }
        for name, load in loaders.items():
            reloaded = load().to(device).eval()
            with torch.inference_mode():
                differences[name] = float((reloaded(audio).logits.float() - fp32).abs().max())
            del reloaded
    _free(device)
    return {
        "bf16_vs_fp32_relative_error": bf16_error,
        "bf16_ok": bf16_error <= BF16_RELATIVE_TOLERANCE,
        "reload_max_abs_diff": differences,
        "reload_ok": all(value <= 1e-6 for value in differences.values()),
    }


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def print_tables(report: dict) -> None:
    print(f"## {report['shape']} shape, random weights, {report['seconds']:g} s clips, {report['device']}")
    print("\n| precision | batch | model | clips/s | real-time factor | vs frozen backbone (range) |")
    print("|---|---|---|---|---|---|")
    for row in report["inference"]:
        low, high = row["ratio_range"]
        print(
            f"| {row['precision']} | {row['batch']} | {row['model']} | {row['clips_per_s']:.1f} | "
            f"{row['real_time_factor']:.4f} | {row['ratio']:.3f}x ({low:.2f}-{high:.2f}) |"
        )
    print(f"\ntraining, batch {report['train_batch']}, {report['train_precision']}:")
    print("\n| mode | trainable params | step (s) | step vs full FT | peak memory (GiB) | memory vs full FT |")
    print("|---|---|---|---|---|---|")
    for row in report["training"]:
        peak = "-" if row["peak_gib"] is None else f"{row['peak_gib']:.2f}"
        memory = "-" if row["memory_ratio"] is None else f"{row['memory_ratio']:.2f}x"
        print(
            f"| {row['mode']} | {row['trainable']:,} | {row['step_s']:.3f} | {row['step_ratio']:.2f}x | {peak} | "
            f"{memory} |"
        )
    print(f"\ncorrectness: {json.dumps(report['correctness'])}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", help="backbone shape; default xls-r-300m on CUDA, tiny on CPU")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps")
    parser.add_argument("--train_precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--json", help="also write the report as JSON here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    shape = args.shape or ("xls-r-300m" if on_gpu else "tiny")
    config = backbone_config(shape)
    seconds = 4.0 if on_gpu else 0.5
    if not on_gpu:
        torch.set_num_threads(1)  # the CPU run only checks that the script works; one thread is the quiet choice
    rounds = (3 if args.quick else 10) if on_gpu else (1 if args.quick else 2)
    steps, train_rounds = (3, 1) if args.quick else (5, 2)
    steps = steps if on_gpu else 1
    train_batch = 16 if on_gpu else 2
    started = time.perf_counter()
    report = {
        "shape": shape,
        "seconds": seconds,
        "device": device_name(device),
        "train_batch": train_batch,
        "train_precision": args.train_precision,
        "inference": bench_inference(config, device, [1, 32 if on_gpu else 2], ["bf16", "fp32"], seconds, rounds),
        "training": bench_training(config, device, train_batch, seconds, steps, train_rounds, args.train_precision),
        "correctness": correctness_checks(config, device, seconds),
    }
    report["wall_s"] = time.perf_counter() - started
    print_tables(report)
    print(f"\nwall time {report['wall_s']:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)
    return report


if __name__ == "__main__":
    main()
