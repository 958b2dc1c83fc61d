"""`MoLExForAudioClassification`: a frozen speech SSL encoder whose linears carry routed LoRA experts, plus a
small back-end (weighted layer sum -> masked pooling -> MLP) that says bona fide or spoof.

Only experts, routers, layer weights and head train. Score convention: `logits[:, 1] - logits[:, 0]`, higher means
more bona fide (label 1 = bonafide, 0 = spoof), mapped to a log-likelihood ratio when `config.calibration` is set.
"""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel, Wav2Vec2FeatureExtractor
from transformers import initialization as init

from .adapter_config import MoLExAdapterConfig
from .configuration_molex import MoLExConfig
from .experts_io import load_expert_pack, save_expert_pack
from .feature_extraction_molex import MoLExFeatureExtractor
from .heads import AttentiveStatisticsPooling, ClassificationHead, MeanPooling, WeightedLayerSum
from .hub_upload import push_model_in_one_commit
from .injection import block_router_name, encoder_blocks, inject_experts
from .layers import MoLExLinear
from .model_inputs import (
    check_clip_lengths,
    minimum_input_samples,
    standardize_attention_mask,
    standardize_input_values,
)
from .outputs import MoLExAudioClassifierOutput, detection_scores, routing_summary
from .router import (
    RouterOutput,
    TopKRouter,
    expert_orthogonality_loss,
    load_balancing_loss,
    router_z_loss,
)
from .routing_state import carry_routing_state, routing_scope
from .scoring import WaveformScoringMixin


class MoLExPreTrainedModel(PreTrainedModel):
    config_class = MoLExConfig
    base_model_prefix = "backbone"
    main_input_name = "input_values"
    input_modalities = "audio"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # `transformers.initialization` functions skip tensors already loaded from a checkpoint.
        std = self.config.initializer_range
        if isinstance(module, MoLExLinear):
            bound = module.in_features**-0.5
            for lora_a, lora_b in zip(module.lora_A, module.lora_B, strict=True):
                init.uniform_(lora_a, -bound, bound)
                init.zeros_(lora_b)
        elif isinstance(module, TopKRouter):
            for weight in module.weight:
                init.normal_(weight, mean=0.0, std=std)
        elif isinstance(module, WeightedLayerSum):
            init.zeros_(module.layer_weights)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None, **kwargs) -> None:
        # Checkpointed blocks are recomputed in backward, after the forward's routing scope has closed: hand them the
        # routing state of the forward they replay.
        if gradient_checkpointing_func is not None:
            kwargs["gradient_checkpointing_func"] = carry_routing_state(gradient_checkpointing_func)
        super()._set_gradient_checkpointing(enable=enable, **kwargs)

    @torch.no_grad()
    def initialize_weights(self) -> None:
        # The backbone is a PreTrainedModel, so transformers dispatches its own `_init_weights` to everything under
        # it, which knows nothing of experts and routers. Initialise those explicitly (loaded tensors are skipped).
        super().initialize_weights()
        for module in self.modules():
            if isinstance(module, (MoLExLinear, TopKRouter)):
                self._init_weights(module)


class MoLExForAudioClassification(WaveformScoringMixin, MoLExPreTrainedModel):
    """Mixture of LoRA Experts in a frozen speech SSL encoder, for bona fide vs spoof classification."""

    def __init__(self, config: MoLExConfig):
        super().__init__(config)
        self.backbone = AutoModel.from_config(config.backbone_config)
        inject_experts(self.backbone, config.adapter)
        hidden_size = config.backbone_config.hidden_size
        num_states = config.backbone_config.num_hidden_layers + 1
        self.layer_sum = WeightedLayerSum(num_states) if config.use_weighted_layer_sum else None
        if config.pooling == "attentive_stats":
            self.pooling = AttentiveStatisticsPooling(hidden_size, config.attention_hidden_size)
        else:
            self.pooling = MeanPooling()
        pooled_size = hidden_size * self.pooling.output_multiplier
        self.classifier = ClassificationHead(pooled_size, config.head_hidden_size, 2, config.head_dropout)
        # Cached in router-column order; modules never change identity after injection.
        self._expert_layers = tuple(self.expert_layers().items())
        self._router_names = tuple(self.routers())
        self.post_init()
        self.apply_trainability()

    # ----- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_backbone(
        cls,
        backbone_name_or_path: str,
        adapter: MoLExAdapterConfig | dict | None = None,
        backbone_kwargs: dict | None = None,
        **config_kwargs,
    ) -> "MoLExForAudioClassification":
        """Build MoLEx around pretrained SSL weights (Hub id or local folder), frozen, with zero-delta experts.

        `backbone_kwargs` override the backbone config; by default SpecAugment masking is off (the paper trains
        without augmentation) and layerdrop is 0. `config_kwargs` go to `MoLExConfig`.
        """
        backbone_config = AutoConfig.from_pretrained(backbone_name_or_path)
        backbone_config.layerdrop = 0.0
        if hasattr(backbone_config, "apply_spec_augment"):
            backbone_config.apply_spec_augment = False  # keeps the checkpoint's masked_spec_embed loadable
        else:
            backbone_config.mask_time_prob = backbone_config.mask_feature_prob = 0.0
        for key, value in (backbone_kwargs or {}).items():
            if not hasattr(backbone_config, key):
                raise ValueError(f"`backbone_kwargs` key {key!r} is not a field of {type(backbone_config).__name__}")
            setattr(backbone_config, key, value)
        backbone = AutoModel.from_pretrained(backbone_name_or_path, config=backbone_config)
        adapter = MoLExAdapterConfig.from_dict(
            adapter if isinstance(adapter, dict) else (adapter or MoLExAdapterConfig()).to_dict()
        )
        adapter.base_model_name_or_path = str(backbone_name_or_path)  # on a copy: the caller's object is untouched
        config_kwargs.setdefault("normalize_audio", _backbone_normalizes_audio(backbone_name_or_path))
        config = MoLExConfig(
            backbone_config=backbone.config,
            adapter=adapter,
            backbone_name_or_path=str(backbone_name_or_path),
            **config_kwargs,
        )
        model = cls(config)
        model.load_backbone_state_dict(backbone.state_dict())
        return model

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> "MoLExForAudioClassification":
        # Loading materialises fresh parameters (requires_grad=True everywhere): freeze again after it.
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        # Every weight comes from the checkpoint: a missing one (expert, router, head or backbone) would otherwise be
        # silently random-initialised and give a wrong score with no error.
        missing = sorted(info.get("missing_keys", []))
        if missing:
            raise ValueError(
                f"{args[0] if args else kwargs.get('pretrained_model_name_or_path')}: the checkpoint lacks "
                f"{len(missing)} weight(s) that config.json declares: {missing[:8]}"
            )
        model.apply_trainability()
        return (model, info) if wants_info else model

    def load_backbone_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load vanilla backbone weights (keys as in `AutoModel`) under the expert wrappers; strict on both sides."""
        own = self.backbone.state_dict()
        remapped = {}
        for key, tensor in state_dict.items():
            if key not in own:
                module_path, _, param = key.rpartition(".")
                wrapped_key = f"{module_path}.base_layer.{param}"
                if wrapped_key not in own:
                    raise ValueError(f"Backbone weight {key!r} has no place in the MoLEx backbone")
                key = wrapped_key
            remapped[key] = tensor
        missing = [k for k in own if k not in remapped and not _is_molex_parameter(k)]
        if missing:
            raise ValueError(f"Backbone checkpoint lacks {len(missing)} weights, e.g. {missing[:5]}")
        self.backbone.load_state_dict(remapped, strict=False)

    def apply_trainability(self, train_head: bool | None = None) -> None:
        """Freeze the backbone; train experts and router rows of non-frozen packs, and (optionally) the back-end.

        `train_head=None` keeps the back-end as it was last set (trainable for a fresh or loaded model)."""
        train_head = getattr(self, "_train_head", True) if train_head is None else train_head
        self._train_head = train_head
        adapter = self.config.adapter
        trainable_pack = [name not in adapter.frozen_packs for name in adapter.expert_packs]
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(False)
        for module in self.backbone.modules():
            # The CNN feature encoder marks its output as requiring grad in training (for gradient checkpointing)
            # unless frozen this way; that would store its activations and backpropagate through it for nothing.
            if hasattr(module, "_freeze_parameters") and hasattr(module, "_requires_grad"):
                module._freeze_parameters()
        for module in self.backbone.modules():
            if isinstance(module, MoLExLinear):
                for i, (lora_a, lora_b) in enumerate(zip(module.lora_A, module.lora_B, strict=True)):
                    lora_a.requires_grad_(trainable_pack[i])
                    lora_b.requires_grad_(trainable_pack[i])
            elif isinstance(module, TopKRouter):
                for i, weight in enumerate(module.weight):
                    weight.requires_grad_(trainable_pack[i])
        for parameter in list(self.pooling.parameters()) + list(self.classifier.parameters()):
            parameter.requires_grad_(train_head)
        if self.layer_sum is not None:
            self.layer_sum.layer_weights.requires_grad_(train_head and self.config.train_layer_weights)

    # ----- introspection ------------------------------------------------------------------------------------------

    def expert_layers(self) -> dict[str, MoLExLinear]:
        """Expert-carrying linears keyed by their path in the vanilla backbone (`encoder.layers.0.attention.q_proj`)."""
        return {name: m for name, m in self.backbone.named_modules() if isinstance(m, MoLExLinear)}

    def routers(self) -> dict[str, TopKRouter]:
        """Routers keyed by router name (`layer_3`, or `layer_3.attention.q_proj` for module scope)."""
        if self.config.adapter.router_scope == "block":
            blocks = enumerate(encoder_blocks(self.backbone))
            return {block_router_name(i): b.molex_router for i, b in blocks if hasattr(b, "molex_router")}
        return {m.router_name: m.router for m in self.expert_layers().values()}

    @property
    def router_names(self) -> list[str]:
        return list(self._router_names)

    def trainable_parameter_counts(self) -> dict[str, int]:
        counts = {"experts": 0, "routers": 0, "back-end": 0, "trainable": 0, "all": 0}
        for name, parameter in self.named_parameters():
            counts["all"] += parameter.numel()
            if not parameter.requires_grad:
                continue
            counts["trainable"] += parameter.numel()
            if ".lora_" in name:
                counts["experts"] += parameter.numel()
            elif "router" in name:
                counts["routers"] += parameter.numel()
            else:
                counts["back-end"] += parameter.numel()
        return counts

    def print_trainable_parameters(self) -> None:
        """PEFT-style one-line report, plus where the trainable parameters are."""
        c = self.trainable_parameter_counts()
        print(
            f"trainable params: {c['trainable']:,} || all params: {c['all']:,} || "
            f"trainable%: {100 * c['trainable'] / c['all']:.4f} "
            f"(experts {c['experts']:,}, routers {c['routers']:,}, back-end {c['back-end']:,})"
        )

    @contextlib.contextmanager
    def experts_disabled(self) -> Iterator[None]:
        """Run the bare frozen backbone (no expert deltas) inside this block."""
        layers = list(self.expert_layers().values())
        for layer in layers:
            layer.experts_enabled = False
        try:
            yield
        finally:
            for layer in layers:
                layer.experts_enabled = True

    # ----- forward ------------------------------------------------------------------------------------------------

    def _frame_mask(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        if attention_mask is None:
            return None
        num_frames = int(self.backbone._get_feat_extract_output_lengths(input_values.shape[-1]))
        return self.backbone._get_feature_vector_attention_mask(num_frames, attention_mask).bool()  # (B, T)

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> MoLExAudioClassifierOutput:
        """input_values: (B, samples), (B, 1, samples) or (samples,) float audio at `config.sampling_rate` (any float
        dtype; cast to the model's); attention_mask: same shape, 1 = real sample, 0 = right padding; labels: (B,) with
        1 = bonafide, 0 = spoof. Clips shorter than one feature-encoder frame, non-finite samples and masks that are
        not 0/1 right-padding are refused (see model_inputs.py)."""
        original_shape = tuple(input_values.shape) if isinstance(input_values, torch.Tensor) else ()
        input_values = standardize_input_values(input_values, self.dtype)
        attention_mask = standardize_attention_mask(attention_mask, input_values, original_shape)
        check_clip_lengths(
            input_values, attention_mask, minimum_input_samples(self.config.backbone_config), self.config.sampling_rate
        )
        frame_mask = self._frame_mask(input_values, attention_mask)
        with routing_scope(frame_mask) as routing:
            outputs = self.backbone(input_values, attention_mask=attention_mask, output_hidden_states=True)
        records = [routing.records[name] for name in self._router_names]
        hidden = self.layer_sum(outputs.hidden_states) if self.layer_sum is not None else outputs.last_hidden_state
        logits = self.classifier(self.pooling(hidden, frame_mask))  # (B, 2)

        aux = {}
        if self.training or labels is not None:
            aux = self._auxiliary_losses(records)
        loss = None
        if labels is not None:
            weight = None
            if self.config.class_weights is not None:
                weight = torch.tensor(self.config.class_weights, device=logits.device, dtype=torch.float32)
            loss = F.cross_entropy(logits.float(), labels.long(), weight=weight) + aux["aux_loss"]
        usage, probs = routing_summary(records)
        return MoLExAudioClassifierOutput(
            loss=loss,
            logits=logits,
            expert_usage=usage,
            router_probs=probs,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            **aux,
        )

    def _auxiliary_losses(self, records: list[RouterOutput]) -> dict[str, torch.Tensor]:
        adapter = self.config.adapter
        balance = load_balancing_loss(records)
        z_loss = router_z_loss(records)
        orthogonality = torch.stack(
            [expert_orthogonality_loss(layer.stacked_lora_a()) for _, layer in self._expert_layers]
        ).mean()
        total = (
            adapter.load_balance_coef * balance
            + adapter.router_z_loss_coef * z_loss
            + adapter.orthogonality_coef * orthogonality
        )
        return {
            "aux_loss": total,
            "load_balance_loss": balance,
            "orthogonality_loss": orthogonality,
            "router_z_loss": z_loss,
        }

    def detection_score(self, logits: torch.Tensor) -> torch.Tensor:
        """Scores (higher = more bona fide), calibrated with `config.calibration` when set."""
        return detection_scores(logits, self.config.calibration)

    # ----- experts in and out -------------------------------------------------------------------------------------

    def add_experts(self, num_experts: int, pack_name: str | None = None, train_head: bool = False) -> str:
        """Append a pack of `num_experts` zero-delta experts (and router rows) for a new domain.

        Every existing pack is frozen (its experts and router rows), as is the backbone; the back-end too unless
        `train_head`. New router rows start at 0; the load-balancing loss lifts them until the new experts are used.
        Returns the new pack's name.
        """
        adapter = self.config.adapter
        pack_name = pack_name or f"pack_{len(adapter.expert_packs)}"
        if pack_name in adapter.expert_packs:
            raise ValueError(f"`expert_packs` already has a pack named {pack_name!r}")
        if not isinstance(num_experts, int) or num_experts < 1:
            raise ValueError(f"`num_experts` must be a positive int, got {num_experts!r}")
        for layer in self.expert_layers().values():
            layer.add_pack(num_experts)
        for router in self.routers().values():
            router.add_pack(num_experts)
        adapter.frozen_packs = list(adapter.expert_packs)
        adapter.expert_packs = {**adapter.expert_packs, pack_name: num_experts}
        adapter.num_experts = sum(adapter.expert_packs.values())
        self.apply_trainability(train_head=train_head)
        return pack_name

    def save_experts(self, save_directory: str | os.PathLike, names: list[str] | None = None) -> list[str]:
        """Write experts (all, or the named experts / packs) as an expert pack folder; returns the expert names."""
        return save_expert_pack(self, save_directory, names)

    def load_experts(
        self, path_or_repo_id: str | os.PathLike, trainable: bool = False, revision: str | None = None
    ) -> list[str]:
        """Append the experts of an expert pack (folder or Hub repo) as new pack(s); returns the new pack names."""
        new_packs = load_expert_pack(self, path_or_repo_id, trainable=trainable, revision=revision)
        self.apply_trainability()
        return new_packs

    def feature_extractor(self) -> MoLExFeatureExtractor:
        """The feature extractor that turns raw audio into this model's `input_values` (float64 normalisation,
        non-finite audio refused); saved as `preprocessor_config.json`."""
        return MoLExFeatureExtractor(
            feature_size=1,
            sampling_rate=self.config.sampling_rate,
            padding_value=0.0,
            do_normalize=self.config.normalize_audio,
            return_attention_mask=True,
        )

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload config, weights, remote code, preprocessor and every expert folder in ONE commit. Keyword
        arguments: `commit_message`, `private`, `token`, `revision`, `create_pr`, `model_card` (see hub_upload.py)."""
        return push_model_in_one_commit(self, repo_id, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """Hub-ready folder: config + weights + remote code, `preprocessor_config.json`, and `experts/` (one PEFT
        LoRA folder per expert plus the pack's MoLEx `adapter_config.json` and router rows).

        Everything is written to a staging folder first and moved into place only when all of it succeeded, so a
        failure never leaves a folder whose weights, config and experts disagree."""
        if not kwargs.get("is_main_process", True):
            return
        save_directory = os.path.abspath(save_directory)
        os.makedirs(os.path.dirname(save_directory), exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".molex-save-", dir=os.path.dirname(save_directory))
        try:
            super().save_pretrained(staging, *args, **kwargs)
            self.feature_extractor().save_pretrained(staging)
            save_expert_pack(self, os.path.join(staging, "experts"), None)
            os.makedirs(save_directory, exist_ok=True)
            for name in os.listdir(staging):
                target = os.path.join(save_directory, name)
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                os.replace(os.path.join(staging, name), target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _is_molex_parameter(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key or "router" in key


def _backbone_normalizes_audio(backbone_name_or_path: str) -> bool:
    """Follow the backbone's own feature extractor (e.g. WavLM-Large does not normalise); default True."""
    try:
        return bool(Wav2Vec2FeatureExtractor.from_pretrained(backbone_name_or_path).do_normalize)
    except (OSError, ValueError):
        return True
