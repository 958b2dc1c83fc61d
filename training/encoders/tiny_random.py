"""A tiny randomly initialised speech SSL backbone (no weights can be downloaded offline) and a speech-like test
signal: what the main job, the tests and the demo fixtures build a MoLEx model on when no pretrained encoder is
given."""

import numpy as np
import torch
from transformers import AutoConfig, AutoModel


# A tiny wav2vec2 whose feature encoder is one wide convolution (400-sample = 25 ms windows every 20 ms, XLS-R's
# frame rate): with random weights that acts like a random filterbank, which a small classifier can learn from,
# whereas seven stacked random convolutions (the real XLS-R encoder shape) wash the signal out (measured: a batch
# that the one-layer front end overfits in 40 steps stays near chance with the seven-layer one).
TINY_BACKBONE = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "conv_dim": [128],
    "conv_kernel": [400],
    "conv_stride": [320],
    "feat_extract_norm": "layer",
    "do_stable_layer_norm": True,
    "conv_bias": True,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
}


def build_tiny_backbone(folder: str, seed: int) -> str:
    """Save a randomly initialised tiny wav2vec2 (stable layer norm like XLS-R, 20 ms frames, see TINY_BACKBONE)."""
    torch.manual_seed(seed)
    AutoModel.from_config(AutoConfig.for_model("wav2vec2", **TINY_BACKBONE)).save_pretrained(folder)
    return folder


def generated_clip(seconds: float = 2.0, sampling_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A voiced, speech-like test signal: a gliding 110-160 Hz pulse train through three formant resonances."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    pitch = 135 + 25 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sampling_rate
    source = sum(np.sin(h * phase) / h for h in range(1, 30))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 3 * t)) ** 2
    signal = np.zeros_like(t)
    for formant, bandwidth in ((700, 90), (1200, 110), (2600, 160)):
        signal += np.sin(2 * np.pi * formant * t) * np.exp(-bandwidth * (t % (1 / 135))) * source
    signal = signal * envelope + 0.01 * rng.standard_normal(t.size)
    return (0.5 * signal / np.abs(signal).max()).astype(np.float32)
