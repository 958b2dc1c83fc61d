"""The pieces a training run is assembled from: corpus, model, data loaders and optimizer, from a `TrainConfig`."""

import logging
from pathlib import Path

import torch
from accelerate import Accelerator
from datasets import Dataset, DatasetDict
from torch.utils.data import DataLoader
from transformers import AutoConfig, get_scheduler

from modeling_molex import MoLExAdapterConfig, MoLExForAudioClassification, TopKRouter
from modeling_molex.backbones import is_whisper
from modeling_molex.layers import MoLExLinear
from modeling_molex.model_inputs import minimum_input_samples
from training.data.audio import ClipPolicy
from training.data.loaders import AudioCollator, ScoredSplit, load_asvspoof5, load_asvspoof2019_la, load_csv_dataset
from training.encoders.named_backbones import (
    NAMED_BACKBONES,
    TINY_RANDOM_BACKBONE,
    named_backbone_folder,
    published_backbone_name,
    resolve_named_backbone,
)
from training.trainer.config import TrainConfig
from training.trainer.distributed import share_folder


logger = logging.getLogger(__name__)


# MoLExAdapterConfig field -> TrainConfig field (the training config flattens the adapter's fields).
ADAPTER_FIELDS = {
    name: name
    for name in (
        "num_experts",
        "top_k",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "layers_to_transform",
        "router_granularity",
        "router_scope",
        "router_noise_std",
        "router_expert_dropout",
        "load_balance_coef",
        "orthogonality_coef",
        "router_z_loss_coef",
    )
} | {"r": "rank"}


def load_corpus(config: TrainConfig, min_clip_samples: int | None = None, sampling_rate: int = 16_000) -> DatasetDict:
    """Train, dev and (if set) eval splits of the configured corpus, subsampled when asked.

    Dev and eval are scored during training, so they must hold both classes (also after `max_eval_samples`) and,
    given `min_clip_samples` (the model's shortest input at `sampling_rate`), no shorter clip: both are refused here,
    not at the first evaluation."""
    splits = ["train", config.dev_split] + ([config.eval_split] if config.eval_split else [])
    root, skip = config.data_root, config.skip_missing_audio
    scored = {split: ScoredSplit(min_clip_samples, sampling_rate) for split in splits if split != "train"}
    if config.dataset == "asvspoof5":
        corpus = load_asvspoof5(root, splits=splits, skip_missing=skip, scored_splits=scored)
    elif config.dataset == "asvspoof2019_la":
        corpus = load_asvspoof2019_la(root, splits=splits, skip_missing=skip, scored_splits=scored)
    elif config.dataset == "in_the_wild":
        raise ValueError(
            "`dataset` in_the_wild has only an eval split: train on another corpus, score it with evaluate"
        )
    else:
        corpus = load_csv_dataset(root, skip_missing=skip, scored_splits=scored)
    missing = [s for s in splits if s not in corpus]
    if missing:
        raise ValueError(f"`data_root` {root}: the corpus has no split(s) {missing} (it has {list(corpus)})")
    selected = {}
    for split in dict.fromkeys(splits):
        limit = config.max_train_samples if split == "train" else config.max_eval_samples
        selected[split] = subsample(corpus[split], limit, config.seed)
        if split in scored and len(classes := set(selected[split]["label"])) < 2:
            raise ValueError(
                f"`max_eval_samples` {limit} leaves the {split!r} split with only "
                f"{'bona fide' if classes == {1} else 'spoof'} clips; training scores it, which needs both classes"
            )
    return DatasetDict(selected)


def subsample(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """A seeded random subset (protocol files are often sorted by class or attack, so not the first N rows)."""
    if limit is None or limit >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(limit)).sort("utt_id")


def whisper_only_level(level: float | None, backbone: str) -> float | None:
    """`log_mel_level` for this backbone: one config (configs/tiny.yaml) also trains SSL encoders (`main_job
    --pretrain`, `--backbone`), whose models refuse a log-mel level; there it is dropped, with a warning."""
    if level is None:
        return None
    backbone_config = AutoConfig.from_pretrained(backbone)
    if is_whisper(backbone_config):
        return level
    logger.warning(
        f"`log_mel_level` ({level}) applies to Whisper backbones only; not used for {backbone} "
        f"({backbone_config.model_type})"
    )
    return None


def build_model(config: TrainConfig, accelerator: Accelerator) -> MoLExForAudioClassification:
    if config.init_from:
        model = MoLExForAudioClassification.from_pretrained(config.init_from)
        if config.add_experts:
            model.add_experts(config.add_experts, pack_name=config.new_pack_name, train_head=config.train_head)
    else:
        backbone = config.backbone
        if backbone in NAMED_BACKBONES:
            backbone = prepare_named_backbone(backbone, config, accelerator)
        adapter = MoLExAdapterConfig(**{field: getattr(config, name) for field, name in ADAPTER_FIELDS.items()})
        log_mel_level = whisper_only_level(config.log_mel_level, backbone)
        torch.manual_seed(config.seed)
        model = MoLExForAudioClassification.from_backbone(
            backbone,
            adapter=adapter,
            pooling=config.pooling,
            head_hidden_size=config.head_hidden_size,
            head_dropout=config.head_dropout,
            class_weights=config.class_weights,
            log_mel_level=log_mel_level,
            backbone_kwargs=backbone_dropout_overrides(backbone, config.backbone_dropout),
        )
        published = published_backbone_name(config.backbone)
        if published:  # the weights were loaded from the cache folder; the model names their Hub original
            model.config.backbone_name_or_path = model.config.adapter.base_model_name_or_path = published
            model.config.backbone_config.name_or_path = published
    shortest = min_input_samples(model.config.backbone_config)
    if config.crop_samples < shortest:
        raise ValueError(
            f"`crop_samples` ({config.crop_samples}) is shorter than one frame of the backbone, whose feature "
            f"encoder needs at least {shortest} samples"
        )
    if config.trainable != "experts":
        apply_baseline_scope(model, config.trainable)
    model.config.crop_samples = config.crop_samples  # recorded for scoring code that windows long clips
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable(every_n_layers=config.checkpoint_every_n_blocks)
    return model


# wav2vec2-style configs name them hidden/attention/activation/feat_proj; WhisperConfig has dropout, attention, activation
BACKBONE_DROPOUT_FIELDS = (
    "hidden_dropout",
    "attention_dropout",
    "activation_dropout",
    "feat_proj_dropout",
    "dropout",
)


def backbone_dropout_overrides(backbone: str, dropout: float | None) -> dict[str, float] | None:
    """`backbone_kwargs` that set every dropout field the backbone's config has to `dropout` (None: no change)."""
    if dropout is None:
        return None
    fields = AutoConfig.from_pretrained(backbone).to_dict()
    return {name: dropout for name in BACKBONE_DROPOUT_FIELDS if name in fields}


def prepare_named_backbone(backbone: str, config: TrainConfig, accelerator: Accelerator) -> str:
    """The local folder of a named backbone (`tiny-random`, `whisper-tiny.en`, `whisper-base`), made ready on every
    node: the seeded tiny backbone is built on the main process and sent to the others; Whisper is converted from
    its pinned packages on the main process first, then on each other node that lacks it (a shared disk already has
    it), because 150-300 MB are better read from a local package than broadcast."""
    folder = named_backbone_folder(backbone, config.output_dir)
    if accelerator.is_main_process:
        resolve_named_backbone(backbone, config.output_dir, config.seed)
    if backbone == TINY_RANDOM_BACKBONE:
        share_folder(folder, accelerator)  # nodes need not share a disk
        return folder
    accelerator.wait_for_everyone()
    if accelerator.is_local_main_process and not accelerator.is_main_process:
        resolve_named_backbone(backbone, config.output_dir, config.seed)
    accelerator.wait_for_everyone()
    return folder


def min_input_samples(backbone_config) -> int:
    """Samples in one output frame of the backbone (400 for wav2vec2 / XLS-R / WavLM, 201 for Whisper): shorter
    input yields no frame at all. The model's own rule (modeling_molex/model_inputs.py)."""
    return minimum_input_samples(backbone_config)


def apply_baseline_scope(model: MoLExForAudioClassification, scope: str) -> None:
    """The comparison's baselines on the same model and loop: every expert pack frozen at its zero delta, then
    'head' trains the back-end only (frozen encoder) and 'full' also the whole encoder (full fine-tuning)."""
    model.config.adapter.frozen_packs = list(model.config.adapter.expert_packs)
    model.apply_trainability(train_head=True)
    if scope != "full":
        return
    # Expert and router weights stay frozen (at zero delta); the adapted linears' own base weights do train.
    adapters = {
        id(parameter)
        for module in model.backbone.modules()
        if isinstance(module, (MoLExLinear, TopKRouter))
        for name, parameter in module.named_parameters()
        if not name.startswith("base_layer.")
    }
    for parameter in model.backbone.parameters():
        if id(parameter) not in adapters:
            parameter.requires_grad_(True)
    for module in model.backbone.modules():
        if hasattr(module, "_requires_grad"):  # the CNN feature encoder: backpropagate through it again
            module._requires_grad = True
    # Weights the classifier never reaches (SpecAugment's masked_spec_embed, a final norm the layer sum skips)
    # would get no gradient: one probe step finds them, and they stay frozen.
    with torch.random.fork_rng():
        model.train()
        model(torch.randn(1, 16_000), labels=torch.ones(1, dtype=torch.long)).loss.backward()
    for parameter in model.backbone.parameters():
        if parameter.requires_grad and parameter.grad is None:
            parameter.requires_grad_(False)
    model.zero_grad(set_to_none=True)


def make_loaders(
    config: TrainConfig, corpus: DatasetDict, normalize: bool
) -> tuple[DataLoader, dict[str, DataLoader], AudioCollator]:
    policy = ClipPolicy(
        num_samples=config.crop_samples, pad=config.pad, eval_mode=config.eval_mode, normalize=normalize
    )
    on_error = "skip" if config.skip_bad_audio else "raise"
    train_collator = AudioCollator(policy, train=True, seed=config.seed, on_error=on_error, crop_per_utterance=True)
    eval_collator = AudioCollator(policy, train=False, seed=config.seed, on_error=on_error)
    train_loader = DataLoader(
        corpus["train"],
        batch_size=config.batch_size,
        shuffle=True,
        collate_fn=train_collator,
        num_workers=config.num_workers,
        drop_last=False,
        # Its own generator: creating an iterator (e.g. after resuming) must not draw from the global RNG that
        # dropout uses, or a resumed run would see other dropout masks than an uninterrupted one.
        generator=torch.Generator().manual_seed(config.seed),
    )
    eval_loaders = {
        split: DataLoader(
            corpus[split], batch_size=config.eval_batch_size, collate_fn=eval_collator, num_workers=config.num_workers
        )
        for split in corpus
        if split != "train"
    }
    return train_loader, eval_loaders, train_collator


def make_optimizer(model: torch.nn.Module, config: TrainConfig, total_steps: int):
    """AdamW on trainable parameters only; no weight decay on biases, norms and the layer weights (all 1-D)."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    if not decay and not no_decay:
        raise ValueError("The model has no trainable parameters")
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
    )
    scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=int(config.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    return optimizer, scheduler


def train_attacks(corpus: DatasetDict) -> set[str]:
    return {a for a, label in zip(corpus["train"]["attack"], corpus["train"]["label"], strict=True) if label == 0}


def ensure_dir(path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
