"""Typed training configuration: YAML files (`configs/*.yaml`) with `--key value` command-line overrides.

Every field is documented where it is declared; `python training/train.py --help` prints them all. The resolved
configuration is saved with every checkpoint and in the final model folder, so a run can always be reproduced.
"""

import argparse
import dataclasses
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from transformers import HfArgumentParser


TINY_RANDOM_BACKBONE = "tiny-random"
DATASETS = ("asvspoof5", "asvspoof2019_la", "in_the_wild", "csv")


def _help(text: str, default: Any = dataclasses.MISSING, **kwargs) -> Any:
    if callable(default) and not isinstance(default, type):
        return field(default_factory=default, metadata={"help": text}, **kwargs)
    return field(default=default, metadata={"help": text}, **kwargs)


@dataclass
class TrainConfig:
    # ----- model -----
    backbone: str = _help(
        f"Speech encoder: a Hub id (facebook/wav2vec2-xls-r-300m, microsoft/wavlm-large, openai/whisper-base), a local "
        f"folder, 'whisper-tiny.en' or 'whisper-base' (OpenAI Whisper from the pinned PyPI packages, converted once "
        f"into outputs/encoders), or '{TINY_RANDOM_BACKBONE}' for a tiny randomly initialised wav2vec2 (tests).",
        TINY_RANDOM_BACKBONE,
    )
    init_from: str | None = _help("Start from this trained MoLEx model folder instead of a fresh one.", None)
    add_experts: int = _help("Domain adaptation: append this many new experts to `init_from` and train only them.", 0)
    new_pack_name: str | None = _help("Name of the expert pack added by `add_experts` (default pack_<i>).", None)
    train_head: bool = _help("With `add_experts`: also train the back-end (pooling + classifier).", False)
    trainable: Literal["experts", "head", "full"] = _help(
        "What trains: 'experts' (MoLEx: experts, routers, back-end); the comparison's baselines keep every expert at "
        "its zero delta and train 'head' (the back-end on the frozen encoder) or 'full' (back-end + whole encoder).",
        "experts",
    )
    num_experts: int = _help("Experts per adapted linear.", 8)
    top_k: int = _help("Experts selected per routing decision.", 2)
    rank: int = _help("LoRA rank of every expert.", 8)
    lora_alpha: float = _help("LoRA alpha (expert delta scaled by alpha / rank).", 16.0)
    lora_dropout: float = _help("Dropout on expert inputs.", 0.0)
    target_modules: list[str] | None = _help(
        "Linears inside each transformer block that carry experts; unset: the backbone family's six projections "
        "(q/k/v/out_proj + intermediate_dense/output_dense, or fc1/fc2 for Whisper).",
        None,
    )
    layers_to_transform: list[int] | None = _help("Blocks that carry experts (all when unset).", None)
    router_granularity: Literal["utterance", "token"] = _help(
        "One routing decision per clip or per frame.", "utterance"
    )
    router_scope: Literal["block", "module"] = _help("One router per block, or one per adapted linear.", "block")
    router_noise_std: float = _help("Gaussian noise on router logits in training.", 0.0)
    router_expert_dropout: float = _help(
        "Expert dropout in training: probability that an expert is hidden from a routing decision.", 0.0
    )
    load_balance_coef: float = _help("Weight of the load-balancing loss.", 0.01)
    orthogonality_coef: float = _help("Weight of the expert orthogonality loss.", 0.01)
    router_z_loss_coef: float = _help("Weight of the router z-loss.", 0.001)
    pooling: Literal["attentive_stats", "mean"] = _help("Pooling over frames in the back-end.", "attentive_stats")
    head_hidden_size: int = _help("Hidden size of the classification MLP.", 128)
    head_dropout: float = _help("Dropout in the classification MLP.", 0.1)
    class_weights: list[float] | None = _help("Cross-entropy weights [spoof, bonafide]; none when unset.", None)
    log_mel_level: float | None = _help(
        "Whisper only: each clip's log-mel maximum is brought to this level (log10), so scores ignore the gain.", None
    )
    backbone_dropout: float | None = _help(
        "Override every dropout probability inside the frozen backbone (hidden, attention, activation, feature "
        "projection); unset keeps the backbone's own. 0 makes training deterministic given the data.",
        None,
    )
    gradient_checkpointing: bool = _help("Recompute transformer blocks in backward (less memory, more time).", False)
    checkpoint_every_n_blocks: int = _help(
        "With gradient_checkpointing: recompute only every n-th block (2 halves the extra time; see bench_train).", 1
    )
    # ----- data -----
    dataset: Literal["asvspoof5", "asvspoof2019_la", "in_the_wild", "csv"] = _help("Corpus format.", "asvspoof5")
    data_root: str | None = _help("Corpus root (or the CSV file for dataset=csv).", None)
    known_attacks: list[str] | None = _help(
        "Eval attack labels that reuse a training method, reported as 'known' besides eval attacks whose label also "
        "occurs in train (mini corpus: A07 A08 A09 A14); every other eval attack is reported as unseen.",
        None,
    )
    dev_split: str = _help("Split used for model selection and calibration.", "dev")
    eval_split: str | None = _help("Split scored once at the end with the best model; unset to skip.", "eval")
    max_train_samples: int | None = _help("Use only the first N training rows (quick runs).", None)
    max_eval_samples: int | None = _help("Use only the first N dev/eval rows (quick runs).", None)
    crop_samples: int = _help("Training crop length in samples (64,600 = 4.04 s at 16 kHz).", 64_600)
    pad: Literal["repeat", "zero"] = _help("How clips shorter than the crop are filled.", "repeat")
    eval_mode: Literal["full", "center", "windows"] = _help("Dev/eval clips: whole, centre crop, or windows.", "full")
    num_workers: int = _help("DataLoader worker processes.", 0)
    skip_missing_audio: bool = _help("Drop (and count) protocol rows whose audio file is missing.", False)
    skip_bad_audio: bool = _help("Drop (and count) clips that fail to decode instead of stopping.", False)
    # ----- optimisation -----
    output_dir: str = _help("Where checkpoints, logs, scores, results.json and model/ go.", "outputs/run")
    num_epochs: int = _help("Training epochs.", 10)
    max_steps: int = _help("Stop after this many optimizer steps (overrides num_epochs when > 0).", -1)
    batch_size: int = _help("Training clips per device per step.", 8)
    eval_batch_size: int = _help("Dev/eval clips per device per forward.", 8)
    gradient_accumulation_steps: int = _help("Micro-batches per optimizer step.", 1)
    learning_rate: float = _help("AdamW peak learning rate.", 1e-4)
    weight_decay: float = _help("AdamW weight decay (not on biases, norms, layer weights).", 1e-4)
    warmup_ratio: float = _help("Fraction of the steps with linear warm-up.", 0.05)
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = _help("Schedule after warm-up.", "cosine")
    max_grad_norm: float = _help("Gradient clipping norm (0 disables).", 1.0)
    mixed_precision: Literal["no", "bf16", "fp16"] = _help("Autocast precision.", "no")
    seed: int = _help("Seed for model init, data order and crops.", 42)
    cpu: bool = _help("Force CPU even when a GPU is present (also makes multi-process runs use gloo).", False)
    # ----- evaluation, checkpoints, logging -----
    eval_every_steps: int = _help("Evaluate on dev every N optimizer steps (0: at the end of each epoch).", 0)
    metric_for_best: Literal["eer", "min_dcf"] = _help(
        "Dev metric that picks the best model (calibration-free ones: actDCF and Cllr need calibrated scores).", "eer"
    )
    early_stopping_patience: int = _help("Stop after N dev evaluations without improvement (0: never).", 0)
    save_total_limit: int = _help("Checkpoints kept (oldest deleted first).", 2)
    resume_from_checkpoint: str | None = _help("A checkpoint folder, or 'latest' in output_dir.", None)
    calibrate: bool = _help("Fit a dev-set score calibration (logistic regression to an LLR) for actDCF/Cllr.", True)
    log_with: Literal["auto", "none", "tensorboard", "trackio"] = _help(
        "Trackers besides the JSONL log ('auto': TensorBoard when installed).", "auto"
    )

    def __post_init__(self):
        check_list_fields(type(self), vars(self))
        positive = ["num_experts", "top_k", "rank", "batch_size", "eval_batch_size", "gradient_accumulation_steps"]
        positive += ["crop_samples", "num_epochs", "head_hidden_size", "save_total_limit", "checkpoint_every_n_blocks"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        non_negative = ["add_experts", "num_workers", "eval_every_steps", "early_stopping_patience"]
        for name in (*non_negative, "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}")
        if self.top_k > self.num_experts:
            raise ValueError(f"`top_k` ({self.top_k}) cannot exceed `num_experts` ({self.num_experts})")
        if self.backbone_dropout is not None and not 0 <= self.backbone_dropout < 1:
            raise ValueError(f"`backbone_dropout` must be in [0, 1), got {self.backbone_dropout}")
        if self.backbone_dropout is not None and self.init_from:
            raise ValueError("`backbone_dropout` applies to a fresh backbone; `init_from` keeps the trained model's")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"`warmup_ratio` must be in [0, 1), got {self.warmup_ratio}")
        if self.learning_rate <= 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate}")
        if self.trainable != "experts" and self.init_from:
            raise ValueError(
                f"`trainable` {self.trainable!r} builds a baseline from `backbone`; it cannot use `init_from`"
            )
        if self.add_experts and not self.init_from:
            raise ValueError("`add_experts` needs `init_from` (the trained model to adapt)")
        if self.data_root is None:
            raise ValueError("`data_root` is required (the corpus root, or the CSV file for dataset=csv)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _list_element_type(annotation: Any) -> type | None:
    """`list[X]` or `list[X] | None` -> X; any other annotation -> None (not a list field)."""
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next((arg for arg in get_args(annotation) if arg is not type(None)), None)
    if get_origin(annotation) is not list:
        return None
    (element,) = get_args(annotation)
    return get_origin(element) or element


def _element_ok(value: Any, element: type) -> bool:
    if isinstance(value, bool):  # YAML `yes` / `true` is a bool, which Python also counts as an int
        return element is bool
    if element is float:
        return isinstance(value, (int, float))
    return isinstance(value, element)


def check_list_fields(config_class: type, values: dict[str, Any], where: str = "") -> None:
    """Refuse a scalar (or a list of the wrong element type) for a list field: YAML `known_attacks: A07` is the
    string "A07", and a string is an iterable that `set()` would silently turn into {'A', '0', '7'}."""
    prefix = f"{where}: " if where else ""
    for config_field in dataclasses.fields(config_class):
        element = _list_element_type(config_field.type)
        name = config_field.name
        if element is None or name not in values or values[name] is None:
            continue
        value = values[name]
        if not isinstance(value, list):
            raise ValueError(
                f"{prefix}`{name}` must be a list (YAML `{name}: [a, b]` or one item per `- a` line), got {value!r}"
            )
        wrong = [item for item in value if not _element_ok(item, element)]
        if wrong:
            raise ValueError(f"{prefix}`{name}` must be a list of {element.__name__}, but holds {wrong[0]!r}")


def load_yaml_config(
    path: str | Path, config_class: type | None = None, help_command: str = "python training/train.py --help"
) -> dict[str, Any]:
    """Read a YAML config for `config_class` (default: TrainConfig); unknown keys are errors that name the file and
    the key. The SSL pretraining config reads its files through this too."""
    config_class = config_class or TrainConfig
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: invalid YAML ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of field: value at the top level")
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(config_class)})
    if unknown:
        raise ValueError(f"{path}: unknown config key(s) {unknown}; see `{help_command}`")
    check_list_fields(config_class, data, str(path))
    return data


def parse_train_config(argv: list[str] | None = None) -> TrainConfig:
    """`--config FILE` sets the defaults, then every other `--key value` overrides them."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, remaining = pre.parse_known_args(argv)
    parser = HfArgumentParser(TrainConfig)
    parser.add_argument("--config", help="YAML file with default values for the fields below")
    if known.config:
        parser.set_defaults(**load_yaml_config(known.config))
    # The extra --config argument comes back as a trailing namespace: the dataclass is the first output.
    return parser.parse_args_into_dataclasses(
        args=["--config", known.config or "", *remaining], look_for_args_file=False
    )[0]
