"""Inference cost of MoLEx vs the frozen backbone and vs PEFT LoRA, on a wav2vec2-base-shaped random model.

    python -m bench.bench_inference [--rounds 10] [--threads 1 2] [--seconds 2] [--batch 2]

Each round runs the three models once, in a rotating order, on the same batch; the table reports the median over
rounds of the per-round time ratios (interleaving cancels most of the drift of a shared, noisy machine). Times are
never asserted in tests: this script is where speed is measured.
MoLEx: E=8 experts, top-2, rank 8, on q/k/v/out_proj + intermediate/output_dense of all 12 blocks, utterance routing.
PEFT LoRA: rank 8 on the same six projections.
"""

import argparse
import copy
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import Wav2Vec2Config, Wav2Vec2Model

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification


SIX_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "out_proj", "intermediate_dense", "output_dense"]


def build_models(granularity: str) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    backbone_config = Wav2Vec2Config(mask_time_prob=0.0, layerdrop=0.0)  # wav2vec2-base shape, 94M params
    frozen = Wav2Vec2Model(backbone_config).eval()
    adapter = MoLExAdapterConfig(
        num_experts=8, top_k=2, r=8, lora_alpha=16, target_modules=SIX_PROJECTIONS, router_granularity=granularity
    )
    molex = MoLExForAudioClassification(MoLExConfig(backbone_config=backbone_config, adapter=adapter))
    molex.load_backbone_state_dict(frozen.state_dict())
    lora = get_peft_model(copy.deepcopy(frozen), LoraConfig(r=8, lora_alpha=16, target_modules=SIX_PROJECTIONS))
    for model in (molex, lora):  # non-zero deltas, as after training
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.01)
    return {"frozen backbone": frozen, "MoLEx E8 k2 r8": molex.eval(), "PEFT LoRA r8": lora.eval()}


def time_once(model: torch.nn.Module, audio: torch.Tensor, mask: torch.Tensor) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        model(audio, attention_mask=mask)
    return time.perf_counter() - start


def measure(models: dict[str, torch.nn.Module], audio: torch.Tensor, rounds: int) -> dict[str, list[float]]:
    mask = torch.ones_like(audio, dtype=torch.long)
    names = list(models)
    for name in names:  # warm-up: allocator, kernels, first-call overheads
        time_once(models[name], audio, mask)
        time_once(models[name], audio, mask)
    times = {name: [] for name in names}
    for round_index in range(rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            times[name].append(time_once(models[name], audio, mask))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--granularity", choices=["utterance", "token"], default="utterance")
    args = parser.parse_args()

    models = build_models(args.granularity)
    audio = torch.randn(args.batch, int(args.seconds * 16000))
    baseline = "frozen backbone"
    print(f"batch {args.batch} x {args.seconds:g} s, {args.rounds} interleaved rounds, {args.granularity} routing")
    print(f"| threads | model | median time (s) | median ratio to {baseline} | ratio range |")
    print("|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        times = measure(models, audio, args.rounds)
        for name, values in times.items():
            ratios = [value / base for value, base in zip(values, times[baseline], strict=True)]
            print(
                f"| {threads} | {name} | {statistics.median(values):.3f} | {statistics.median(ratios):.3f} | "
                f"{min(ratios):.3f}-{max(ratios):.3f} |"
            )


if __name__ == "__main__":
    main()
