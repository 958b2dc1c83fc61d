"""Cost versus the number of experts: E in {4, 8, 16, 32, 64} at top-2, on CPU.

    python -m bench.bench_experts [--experts 4 8 16 32 64] [--shape small] [--rounds 8] [--threads 1]

For each E, one MoLEx model (rank 8 on the six projections of every block, same frozen weights):
- inference time, utterance routing (and token routing with `--token`), interleaved over the E values, as a ratio
  to E = first value. Only k experts run per clip with utterance routing, so this should be flat in E (the router's
  D -> E gate and softmax do grow, negligibly);
- training step time (forward with labels, backward, AdamW on the trainable parameters), interleaved;
- training memory, counted exactly rather than sampled: the bytes the autograd graph saves for backward (distinct
  storages, through `saved_tensors_hooks`) plus trainable parameters x 4 (weights, gradients, two AdamW moments).
Times use process CPU seconds at one thread (immune to waiting for a core on a shared machine); the ratio columns
are medians of per-round ratios.
"""

import argparse
import statistics
import time

import torch
from transformers import Wav2Vec2Model

from bench.common import backbone_config, build_molex, cpu_name, interleaved_times, median_ratios


def saved_activation_bytes(model: torch.nn.Module, loss_fn) -> int:
    """Bytes of the distinct tensor storages the autograd graph keeps for backward during one forward (the model's
    own parameters and buffers, which the graph also references, excluded)."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = loss_fn()
    del loss
    return sum(storages.values())


def build_models(shape: str, experts: list[int], granularity: str) -> dict[int, torch.nn.Module]:
    torch.manual_seed(0)
    config = backbone_config(shape)
    frozen = Wav2Vec2Model(config)
    return {e: build_molex(config, frozen, num_experts=e, granularity=granularity) for e in experts}


def inference_ratios(models: dict[int, torch.nn.Module], audio: torch.Tensor, rounds: int) -> dict[int, tuple]:
    def make_run(model):
        def run():
            with torch.inference_mode():
                return model(audio)

        return run

    for model in models.values():
        model.eval()
    runs = {e: make_run(model) for e, model in models.items()}
    times = interleaved_times(runs, rounds, clock=time.process_time)
    ratios = median_ratios(times, next(iter(models)))
    return {e: (statistics.median(times[e]), *ratios[e]) for e in models}


def training_ratios(models: dict[int, torch.nn.Module], audio: torch.Tensor, rounds: int) -> dict[int, tuple]:
    labels = torch.arange(audio.shape[0]) % 2

    def make_step(model):
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step():
            model(audio, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    for model in models.values():
        model.train()
    runs = {e: make_step(model) for e, model in models.items()}
    times = interleaved_times(runs, rounds, warmup=1, clock=time.process_time)
    ratios = median_ratios(times, next(iter(models)))
    result = {}
    for e, model in models.items():
        activations = saved_activation_bytes(model, lambda model=model: model(audio, labels=labels).loss)
        trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        result[e] = (statistics.median(times[e]), *ratios[e], activations / 2**20, 4 * trainable / 2**20)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--shape", default="small", help="backbone shape (bench/common.py SHAPES)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--train_rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--token", action="store_true", help="also time token routing (every expert computed)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    audio = torch.randn(args.batch, int(args.seconds * 16000))
    report = {"inference": {}, "training": {}}
    for granularity in ["utterance"] + (["token"] if args.token else []):
        models = build_models(args.shape, args.experts, granularity)
        report["inference"][granularity] = inference_ratios(models, audio, args.rounds)
        if granularity == "utterance":
            report["training"] = training_ratios(models, audio, args.train_rounds)
        del models
    base = args.experts[0]
    print(
        f"{args.shape} shape, MoLEx top-2 r8 on six projections, batch {args.batch} x {args.seconds:g} s, "
        f"{args.threads} thread(s), CPU seconds, {args.rounds} inference / {args.train_rounds} training interleaved "
        f"rounds; {cpu_name()}"
    )
    columns = [f"inference, {g} routing, vs E={base}" for g in report["inference"]]
    print(
        f"| E | {' | '.join(columns)} | training step (s) | step vs E={base} | saved activations (MiB) | "
        "params + grads + AdamW (MiB) |"
    )
    print("|---" * (5 + len(columns)) + "|")
    for e in args.experts:
        cells = [f"{times[e][1]:.3f}x ({times[e][0]:.3f} s)" for times in report["inference"].values()]
        step, ratio, _, _, activations, states = report["training"][e]
        print(f"| {e} | {' | '.join(cells)} | {step:.3f} | {ratio:.3f}x | {activations:.1f} | {states:.1f} |")
    return report


if __name__ == "__main__":
    main()
