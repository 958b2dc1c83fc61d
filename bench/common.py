"""What the benches share: backbone shapes, model builders, and interleaved timing with median ratios.

Every figure a bench prints is either a ratio of interleaved runs in one process (A, B, C, A, B, C, ... in a rotating
order, so the drift of a shared, noisy machine hits every model alike) or an absolute time printed with the hardware
it ran on. Nothing here is asserted by a test: tests only run the benches in a tiny shape so they do not rot.
"""

import copy
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification


SIX_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "out_proj", "intermediate_dense", "output_dense"]

SHAPES = {
    # wav2vec2-base: the default Wav2Vec2Config, 94 M parameters.
    "wav2vec2-base": {},
    # XLS-R-300M / wav2vec2-large-lv60: 24 blocks of 1024, stable layer norm.
    "xls-r-300m": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "feat_extract_norm": "layer",
        "do_stable_layer_norm": True,
        "conv_bias": True,
        "num_conv_pos_embeddings": 128,
        "num_conv_pos_embedding_groups": 16,
    },
    # Small but not trivial: 4 blocks of 256, so expert and routing costs are visible next to the backbone.
    "small": {
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 1024,
        "conv_dim": [64, 64, 64, 64, 64, 64, 64],
        "num_conv_pos_embeddings": 32,
        "num_conv_pos_embedding_groups": 4,
    },
    # Test shape: hidden 32, 2 blocks, two conv layers (runs in well under a second).
    "tiny": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "conv_dim": [16, 16],
        "conv_kernel": [10, 3],
        "conv_stride": [5, 2],
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 2,
    },
}


def backbone_config(shape: str) -> Wav2Vec2Config:
    """A random-weight wav2vec2 config of the named shape, with SpecAugment masking and layerdrop off."""
    if shape not in SHAPES:
        raise ValueError(f"`shape` must be one of {sorted(SHAPES)}, got {shape!r}")
    return Wav2Vec2Config(**SHAPES[shape], mask_time_prob=0.0, layerdrop=0.0)


def nonzero_lora_b(model: torch.nn.Module) -> torch.nn.Module:
    """Give every LoRA B a small non-zero value, as after training (a zero B could be skipped by a clever kernel)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.01)
    return model


def build_molex(
    config: Wav2Vec2Config,
    frozen: Wav2Vec2Model | None = None,
    num_experts: int = 8,
    top_k: int = 2,
    r: int = 8,
    granularity: str = "utterance",
) -> MoLExForAudioClassification:
    """MoLEx on the six projections of every block; the frozen weights copied from `frozen` when given."""
    adapter = MoLExAdapterConfig(
        num_experts=num_experts,
        top_k=top_k,
        r=r,
        lora_alpha=2 * r,
        target_modules=SIX_PROJECTIONS,
        router_granularity=granularity,
    )
    model = MoLExForAudioClassification(MoLExConfig(backbone_config=config, adapter=adapter))
    if frozen is not None:
        model.load_backbone_state_dict(frozen.state_dict())
    return nonzero_lora_b(model)


def build_peft_lora(frozen: Wav2Vec2Model, r: int) -> torch.nn.Module:
    """PEFT LoRA of rank `r` on the six projections of a copy of `frozen`."""
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(copy.deepcopy(frozen), LoraConfig(r=r, lora_alpha=2 * r, target_modules=SIX_PROJECTIONS))
    return nonzero_lora_b(lora)


def interleaved_times(
    runs: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int = 2,
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per call of each run, `rounds` times, in a rotating order per round (after `warmup` calls each).

    `clock=time.process_time` counts the CPU seconds of this process instead of wall seconds: on a machine shared
    with other jobs, wall time includes waiting for a core, CPU time does not (at one thread it is the compute)."""
    sync = sync or (lambda: None)
    names = list(runs)
    for name in names:
        for _ in range(warmup):
            runs[name]()
    sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = clock()
            runs[name]()
            sync()
            times[name].append(clock() - start)
    return times


def median_ratios(times: dict[str, list[float]], baseline: str) -> dict[str, tuple[float, float, float]]:
    """Per run: (median of the per-round ratios to `baseline`, min ratio, max ratio)."""
    result = {}
    for name, values in times.items():
        ratios = [value / base for value, base in zip(values, times[baseline], strict=True)]
        result[name] = (statistics.median(ratios), min(ratios), max(ratios))
    return result


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux) and the logical core count, for the table header."""
    name = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical cores"
