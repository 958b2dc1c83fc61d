"""Typed configuration of SSL pretraining (`configs/ssl_*.yaml` plus `--key value` overrides), validated by field.

The recipe is HuBERT-style masked prediction: a small `Wav2Vec2Model` (trained CNN + transformer) sees speech with
spans of frames replaced by its `masked_spec_embed` and predicts, for the masked frames, which k-means cluster each
frame's acoustic features fall in. Every field below says what it changes; the resolved configuration is saved with
every checkpoint and beside the exported encoder, so a run can always be reproduced.
"""

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from transformers import HfArgumentParser

from training.trainer.config import load_yaml_config


FEATURE_KINDS = ("logmel", "mfcc")


def _help(text: str, default: Any = dataclasses.MISSING) -> Any:
    if callable(default) and not isinstance(default, type):
        return field(default_factory=default, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class CodebookSpec:
    """One set of masked-prediction targets: k-means clusters of one kind of frame feature.

    Args:
        features: "logmel" (log mel energies: spectral envelope plus, with many bands, resolved low harmonics) or
            "mfcc" (cepstrum with deltas and delta-deltas: the smoothed envelope and its motion).
        dims: mel bands for "logmel"; cepstral coefficients (before deltas) for "mfcc".
        clusters: k of the k-means codebook (the classes the head predicts).
    """

    features: str
    dims: int
    clusters: int

    @classmethod
    def parse(cls, value: Any, where: str) -> "CodebookSpec":
        if isinstance(value, CodebookSpec):
            return value
        if not isinstance(value, dict) or set(value) != {"features", "dims", "clusters"}:
            raise ValueError(f"`{where}` must be a mapping with exactly features, dims, clusters; got {value!r}")
        if value["features"] not in FEATURE_KINDS:
            raise ValueError(f"`{where}.features` must be one of {FEATURE_KINDS}, got {value['features']!r}")
        for name in ("dims", "clusters"):
            if not isinstance(value[name], int) or value[name] < 2:
                raise ValueError(f"`{where}.{name}` must be an integer >= 2, got {value[name]!r}")
        return cls(value["features"], value["dims"], value["clusters"])


@dataclass
class SSLPretrainConfig:
    # ----- data (train split only: see training/encoders/ssl_pool.py) -----
    corpus_dir: str | None = _help("Mini corpus root; its train split (protocol + metadata) feeds the pool.", None)
    pool_dir: str | None = _help(
        "Where the unlabelled pool (FLAC + pool_manifest.tsv) is built once and reused; default OUTPUT_DIR/pool.", None
    )
    use_training_spoofs: bool = _help(
        "Put spoofs of the *training* attack methods (corpus train split + extra ones) in the unlabelled pool.", True
    )
    extra_bonafide: bool = _help(
        "Add every train-key Asterisk recording at any length (>= 0.5 s after trimming), through the corpus channel.",
        True,
    )
    extra_spoofs_per_attack: int = _help(
        "Extra clips per training attack method (A01 espeak-ng, A02 flite, A04 LPC-10) from train keys; 0 = none.", 0
    )
    coded_fraction: float = _help(
        "Share of extra pool clips that also get an eval-style codec copy (augmentation).", 0.3
    )
    max_pool_clips: int | None = _help("Use at most this many pool clips (tests and quick runs).", None)
    on_bad_audio: Literal["skip", "raise"] = _help(
        "An unreadable pool clip: 'skip' counts and lists it in the log, 'raise' stops with its path.", "raise"
    )
    pool_workers: int = _help("Processes that render the extra pool clips.", 1)
    # ----- encoder (a Wav2Vec2Config; the CNN is trained) -----
    hidden_size: int = _help("Transformer width.", 128)
    num_hidden_layers: int = _help("Transformer blocks.", 4)
    num_attention_heads: int = _help("Attention heads.", 4)
    intermediate_size: int = _help("Feed-forward width.", 512)
    conv_dim: list[int] = _help("CNN channels per layer.", lambda: [32, 64, 128, 128])
    conv_kernel: list[int] = _help("CNN kernel per layer.", lambda: [10, 8, 4, 4])
    conv_stride: list[int] = _help(
        "CNN stride per layer (product 320 = 20 ms frames at 16 kHz).", lambda: [5, 4, 4, 4]
    )
    num_conv_pos_embeddings: int = _help("Kernel of the convolutional position embedding.", 32)
    num_conv_pos_embedding_groups: int = _help("Groups of the convolutional position embedding.", 16)
    dropout: float = _help("Hidden, attention and activation dropout in pretraining.", 0.1)
    # ----- targets and masking -----
    codebooks: list[dict] = _help(
        "Target sets (YAML list of {features, dims, clusters}); one linear head and one cross-entropy each.",
        lambda: [
            {"features": "logmel", "dims": 64, "clusters": 256},
            {"features": "mfcc", "dims": 13, "clusters": 100},
        ],
    )
    kmeans_frames: int = _help("Frames sampled from the pool to fit each codebook.", 100_000)
    kmeans_iterations: int = _help("Lloyd iterations of scipy's kmeans2 (k-means++ initialisation).", 20)
    mask_prob: float = _help("transformers' _compute_mask_indices mask_prob (span starts per frame x length).", 0.5)
    mask_length: int = _help("Masked span length in frames (20 ms each).", 5)
    # ----- crops and augmentation -----
    crop_samples: int = _help(
        "Longest training crop (samples at 16 kHz); shorter clips are zero-padded and masked.", 24_000
    )
    min_clip_samples: int = _help("Clips shorter than this are left out of the pool (counted).", 8_000)
    speed_prob: float = _help("Probability of a speed perturbation (resampling: changes tempo and pitch).", 0.5)
    speed_factors: list[float] = _help("Speed factors drawn from.", lambda: [0.9, 0.95, 1.05, 1.1])
    noise_prob: float = _help("Probability of added white/pink/brown noise.", 0.3)
    noise_snr_db: list[float] = _help("Noise SNR range [low, high] in dB.", lambda: [10.0, 40.0])
    # ----- optimisation -----
    output_dir: str = _help("Run folder: checkpoints/, logs/, codebooks.safetensors, encoder/.", "outputs/ssl")
    batch_size: int = _help("Crops per step.", 16)
    learning_rate: float = _help("AdamW peak learning rate.", 1e-3)
    weight_decay: float = _help("AdamW weight decay on matrices.", 0.01)
    warmup_ratio: float = _help("Linear warm-up share of max_steps, then cosine decay.", 0.05)
    max_grad_norm: float = _help("Gradient clipping norm (0 disables).", 1.0)
    max_steps: int = _help("Optimizer steps (the LR schedule spans them).", 2000)
    max_minutes: float = _help("Stop (checkpoint + export) after this much wall time; 0 = no limit.", 0.0)
    seed: int = _help("Seed of pool rendering, codebooks, init, batches, crops, augmentation and masks.", 0)
    cpu: bool = _help("Force CPU even when a GPU is present.", False)
    torch_threads: int = _help("torch.set_num_threads (0 leaves torch's default).", 0)
    # ----- checkpoints and logs -----
    checkpoint_every_steps: int = _help("Atomic checkpoint every N steps (and at the end).", 100)
    save_total_limit: int = _help("Checkpoints kept.", 2)
    log_every_steps: int = _help("Averaged loss / accuracy record every N steps in logs/pretrain_log.jsonl.", 10)
    resume: bool = _help("Continue from the newest complete checkpoint in output_dir (fresh start if none).", False)

    def __post_init__(self):
        positive = ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "batch_size"]
        positive += ["crop_samples", "min_clip_samples", "max_steps", "checkpoint_every_steps", "save_total_limit"]
        positive += ["log_every_steps", "kmeans_frames", "kmeans_iterations", "mask_length", "pool_workers"]
        positive += ["num_conv_pos_embeddings", "num_conv_pos_embedding_groups"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        for name in ("extra_spoofs_per_attack", "torch_threads", "max_minutes"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}")
        for name in ("coded_fraction", "speed_prob", "noise_prob", "warmup_ratio", "dropout"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"`mask_prob` must be in (0, 1), got {self.mask_prob}")
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise ValueError("`conv_dim`, `conv_kernel` and `conv_stride` must have the same length")
        if math.prod(self.conv_stride) != 320:
            raise ValueError(
                f"`conv_stride` must multiply to 320 (20 ms frames, the targets' hop), got {self.conv_stride}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"`hidden_size` {self.hidden_size} must divide by `num_attention_heads`")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError(f"`hidden_size` {self.hidden_size} must divide by `num_conv_pos_embedding_groups`")
        if len(self.noise_snr_db) != 2 or self.noise_snr_db[0] > self.noise_snr_db[1]:
            raise ValueError(f"`noise_snr_db` must be [low, high], got {self.noise_snr_db}")
        if not self.speed_factors or min(self.speed_factors) <= 0:
            raise ValueError(f"`speed_factors` must be positive numbers, got {self.speed_factors}")
        if self.learning_rate <= 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate}")
        if self.corpus_dir is None:
            raise ValueError("`corpus_dir` is required (the mini corpus whose train split feeds the pool)")
        if not self.codebooks:
            raise ValueError("`codebooks` must list at least one target set")
        self.codebooks = [
            dataclasses.asdict(CodebookSpec.parse(c, f"codebooks[{i}]")) for i, c in enumerate(self.codebooks)
        ]

    @property
    def codebook_specs(self) -> list[CodebookSpec]:
        return [CodebookSpec(**c) for c in self.codebooks]

    @property
    def resolved_pool_dir(self) -> Path:
        return Path(self.pool_dir) if self.pool_dir else Path(self.output_dir) / "pool"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def load_ssl_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML pretraining config; unknown keys are errors that name the file and the key."""
    return load_yaml_config(path, SSLPretrainConfig, "python -m training.pretrain_ssl --help")


def parse_ssl_config(argv: list[str] | None = None) -> SSLPretrainConfig:
    """`--config FILE` sets the defaults, then every other `--key value` overrides them."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, remaining = pre.parse_known_args(argv)
    parser = HfArgumentParser(SSLPretrainConfig)
    parser.add_argument("--config", help="YAML file with default values for the fields below")
    defaults = load_ssl_yaml(known.config) if known.config else {}
    codebooks = defaults.pop("codebooks", None)
    parser.set_defaults(**defaults)
    config = parser.parse_args_into_dataclasses(
        args=["--config", known.config or "", *remaining], look_for_args_file=False
    )[0]
    if codebooks is not None:  # a list of mappings has no command-line form: YAML only
        config.codebooks = codebooks
        config.__post_init__()
    return config
