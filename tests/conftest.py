"""Shared fixtures: tiny randomly initialised speech SSL backbones (one per supported family), saved to local
folders the way a Hub checkpoint would be, so every test runs offline in seconds."""

import os
import subprocess
import sys
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)


_TINY_COMMON = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [16, 16],
    "conv_kernel": [10, 3],
    "conv_stride": [5, 2],
    "num_conv_pos_embedding_groups": 2,
    "hidden_dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "feat_proj_dropout": 0.0,
    "layerdrop": 0.0,
    "mask_time_prob": 0.0,  # SpecAugment off: tests compare runs that must see the same input
}

# One case per backbone family (plus the XLS-R-style stable-layer-norm variant of wav2vec2).
TINY_BACKBONES = {
    "wav2vec2": {"model_type": "wav2vec2", "num_conv_pos_embeddings": 16},
    "wav2vec2-xlsr": {
        "model_type": "wav2vec2",
        "num_conv_pos_embeddings": 16,
        "feat_extract_norm": "layer",
        "do_stable_layer_norm": True,
        "conv_bias": True,
    },
    "hubert": {"model_type": "hubert", "num_conv_pos_embeddings": 16},
    "wavlm": {"model_type": "wavlm", "num_conv_pos_embeddings": 16, "num_buckets": 32, "max_bucket_distance": 64},
    "data2vec-audio": {"model_type": "data2vec-audio", "num_conv_pos_embeddings": 2, "conv_pos_kernel_size": 5},
    # Whisper's encoder (the decoder is there because Whisper checkpoints have one; MoLEx ignores it). 80 mel bins
    # as the real models; 1,500 positions (30 s) as they have, only the first T are used.
    "whisper": {
        "model_type": "whisper",
        "d_model": 32,
        "encoder_layers": 2,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "decoder_layers": 1,
        "decoder_attention_heads": 2,
        "decoder_ffn_dim": 64,
        "vocab_size": 64,
        "max_target_positions": 16,
        "num_mel_bins": 80,
        "max_source_positions": 1500,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "decoder_start_token_id": 1,
    },
}
FAMILIES = list(TINY_BACKBONES)
SSL_FAMILIES = [family for family in FAMILIES if family != "whisper"]


def tiny_backbone_config(family: str):
    spec = dict(TINY_BACKBONES[family])
    if spec["model_type"] == "whisper":
        spec.pop("model_type")
        return WhisperConfig(**spec)
    model_type = spec.pop("model_type")
    return AutoConfig.for_model(model_type, **_TINY_COMMON, **spec)


@pytest.fixture(scope="session")
def tiny_backbone_dirs(tmp_path_factory) -> dict[str, str]:
    """family -> folder holding a saved, randomly initialised tiny backbone (config.json + model.safetensors)."""
    root = tmp_path_factory.mktemp("backbones")
    dirs = {}
    for index, family in enumerate(FAMILIES):
        torch.manual_seed(1000 + index)
        path = root / family
        if family == "whisper":  # laid out as the Whisper converter writes it, and as Hub Whisper repos are
            WhisperForConditionalGeneration(tiny_backbone_config(family)).save_pretrained(path)
            WhisperFeatureExtractor(feature_size=80).save_pretrained(path)
        else:
            AutoModel.from_config(tiny_backbone_config(family)).save_pretrained(path)
        dirs[family] = str(path)
    return dirs


def random_audio(batch: int = 2, samples: int = 4000, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, samples, generator=generator)


def router_record(logits: list[list[float]], top_k: int, mask: list[bool] | None = None):
    """One router's decisions (1 clip, S decisions) with the router's own top-k rule, as a `RouterOutput`."""
    from modeling_molex.router import RouterOutput

    logits_tensor = torch.tensor([logits])
    probs = logits_tensor.softmax(-1)
    weights, indices = probs.topk(top_k, dim=-1)
    mask_tensor = None if mask is None else torch.tensor([mask])
    return RouterOutput(logits_tensor, probs, indices, weights / weights.sum(-1, keepdim=True), mask_tensor)


@torch.no_grad()
def randomize_experts(model, std: float = 0.2, seed: int = 0) -> None:
    """Give every expert a non-zero B so that experts change the output (B = 0 at init)."""
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        if ".lora_B." in name:
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def run_in_fresh_process(
    script: str, args: list[str], tmp_path: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `script` in a new interpreter that cannot import this project: another working directory, a minimal
    environment (no PYTHONPATH), offline Hub, its own HF_HOME (so remote code is copied afresh)."""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir(exist_ok=True)
    (workdir / "script.py").write_text(script)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        **(extra_env or {}),
    }
    command = [sys.executable, "script.py", *args]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
