"""`MoLExForAudioClassification`: a frozen speech SSL encoder whose linears carry routed LoRA experts, plus a
small back-end (weighted layer sum -> masked pooling -> MLP) that says bona fide or spoof.

Only experts, routers, layer weights and head train. Score convention: `logits[:, 1] - logits[:, 0]`, higher means
more bona fide (label 1 = bonafide, 0 = spoof), mapped to a log-likelihood ratio when `config.calibration` is set.
"""

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, PreTrainedModel
from transformers import initialization as init

from .adapter_config import MoLExAdapterConfig
from .atomic_saves import check_before_load, check_model_folder
from .backbones import backbone_normalizes_audio, build_backbone, disable_layerdrop, load_pretrained_backbone
from .configuration_molex import MoLExConfig
from .expert_management import MoLExExpertsMixin
from .feature_extraction_molex import MoLExFeatureExtractor
from .finite_checks import check_finite_tensors
from .heads import AttentiveStatisticsPooling, ClassificationHead, MeanPooling, WeightedLayerSum
from .hub_upload import push_model_in_one_commit
from .injection import inject_experts
from .layers import MoLExLinear
from .model_folder import write_model_folder
from .model_inputs import (
    check_clip_lengths,
    minimum_input_samples,
    padded_lengths,
    standardize_attention_mask,
    standardize_input_values,
)
from .outputs import MoLExAudioClassifierOutput, detection_scores, routing_summary
from .padding_invariance import make_padding_invariant
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
            module.reset_expert_parameters()  # PEFT's LoRA init, written once in layers.py
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


class MoLExForAudioClassification(WaveformScoringMixin, MoLExExpertsMixin, MoLExPreTrainedModel):
    """Mixture of LoRA Experts in a frozen speech SSL encoder, for bona fide vs spoof classification.

    `_pretrained_backbone` (used by `from_backbone`) is an already loaded backbone to wrap instead of a freshly
    initialised one, so that the SSL weights are held in memory once."""

    def __init__(self, config: MoLExConfig, *, _pretrained_backbone: PreTrainedModel | None = None):
        super().__init__(config)
        if _pretrained_backbone is not None:
            for tensor in [*_pretrained_backbone.parameters(), *_pretrained_backbone.buffers()]:
                tensor._is_hf_initialized = True  # loaded weights: `post_init` must not re-initialise them
            self.backbone = _pretrained_backbone
        else:
            self.backbone = build_backbone(config.backbone_config)
        if config.log_mel_level is not None:  # Whisper only (the config refuses it otherwise)
            self.backbone.log_mel.level = float(config.log_mel_level)
        inject_experts(self.backbone, config.adapter)
        make_padding_invariant(self.backbone)  # a clip scores the same alone and padded in a batch
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
        Whisper folders / ids (`openai/whisper-base`) load only the encoder (see whisper_encoder.py).

        `backbone_kwargs` override the backbone config; by default SpecAugment masking is off (the paper trains
        without augmentation) and layerdrop is 0. `config_kwargs` go to `MoLExConfig`.
        """
        backbone_config = AutoConfig.from_pretrained(backbone_name_or_path)
        disable_layerdrop(backbone_config)
        if hasattr(backbone_config, "apply_spec_augment"):
            backbone_config.apply_spec_augment = False  # keeps the checkpoint's masked_spec_embed loadable
        else:
            backbone_config.mask_time_prob = backbone_config.mask_feature_prob = 0.0
        for key, value in (backbone_kwargs or {}).items():
            if not hasattr(backbone_config, key):
                raise ValueError(f"`backbone_kwargs` key {key!r} is not a field of {type(backbone_config).__name__}")
            setattr(backbone_config, key, value)
        backbone = load_pretrained_backbone(backbone_name_or_path, backbone_config)
        adapter = MoLExAdapterConfig.from_dict(
            adapter if isinstance(adapter, dict) else (adapter or MoLExAdapterConfig()).to_dict()
        )
        adapter.base_model_name_or_path = str(backbone_name_or_path)  # on a copy: the caller's object is untouched
        config_kwargs.setdefault("normalize_audio", backbone_normalizes_audio(backbone_name_or_path, backbone_config))
        config = MoLExConfig(
            backbone_config=backbone.config,
            adapter=adapter,
            backbone_name_or_path=str(backbone_name_or_path),
            **config_kwargs,
        )
        return cls(config, _pretrained_backbone=backbone)

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> "MoLExForAudioClassification":
        # Loading materialises fresh parameters (requires_grad=True everywhere): freeze again after it.
        wants_info = kwargs.pop("output_loading_info", False)
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        check_before_load(source)  # no FIFO in it; an interrupted save may have left the previous version beside it
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        # Every weight comes from the checkpoint: a missing one (expert, router, head or backbone) would otherwise be
        # silently random-initialised and give a wrong score with no error.
        missing = sorted(info.get("missing_keys", []))
        if missing:
            raise ValueError(
                f"{source}: the checkpoint lacks {len(missing)} weight(s) that config.json declares: {missing[:8]}"
            )
        # A NaN or infinite weight would give every clip a NaN score (and NaN >= 0 is False: the verdict "spoof").
        check_finite_tensors(model.state_dict().items(), str(source))
        check_model_folder(source, model.config)  # a local folder mixing files of two saves is refused
        _align_cpu_tensors(model)
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
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> MoLExAudioClassifierOutput | tuple:
        """input_values: (B, samples), (B, 1, samples) or (samples,) float audio at `config.sampling_rate` (any float
        dtype; cast to the model's); attention_mask: same shape, 1 = real sample, 0 = right padding; labels: (B,) with
        1 = bonafide, 0 = spoof. Clips shorter than one feature-encoder frame, non-finite samples and masks that are
        not 0/1 right-padding are refused (see model_inputs.py). `output_hidden_states` / `output_attentions` add the
        backbone's (attentions need `attn_implementation="eager"`); `return_dict=False` returns `to_tuple()`."""
        config = self.config
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_attentions = (
            getattr(config, "output_attentions", False) if output_attentions is None else output_attentions
        )
        return_dict = config.return_dict if return_dict is None else return_dict
        original_shape = tuple(input_values.shape) if isinstance(input_values, torch.Tensor) else ()
        input_values = standardize_input_values(input_values, self.dtype)
        attention_mask = standardize_attention_mask(attention_mask, input_values, original_shape)
        check_clip_lengths(
            input_values, attention_mask, minimum_input_samples(self.config.backbone_config), self.config.sampling_rate
        )
        frame_mask = self._frame_mask(input_values, attention_mask)
        lengths = padded_lengths(attention_mask)
        with routing_scope(frame_mask, self.active_expert_mask(), lengths) as routing:
            outputs = self.backbone(
                input_values,
                attention_mask=attention_mask,
                output_hidden_states=True,
                output_attentions=bool(output_attentions),
            )
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
        output = MoLExAudioClassifierOutput(
            loss=loss,
            logits=logits,
            expert_usage=usage,
            router_probs=probs,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=outputs.attentions if output_attentions else None,
            **aux,
        )
        return output if return_dict else output.to_tuple()

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

    # ----- saving and sharing -------------------------------------------------------------------------------------

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

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True, **kwargs) -> None:
        """Hub-ready folder: config + weights + remote code, `preprocessor_config.json`, `experts/` (one PEFT
        LoRA folder per expert plus the pack's `molex_pack_config.json` and router rows) and the routing signatures
        the model scores novelty with (`routing_signatures.json`, extended after domain adaptation).

        The whole folder is built in a hidden sibling and swapped in at once, so a crash (even kill -9) leaves the
        previous save or this one, never a mix; every file carries this save's id, checked by `from_pretrained`.
        See model_folder.py for what is carried over from an earlier save in the folder."""
        if not is_main_process:  # other ranks of a distributed run write nothing (positional, as in transformers)
            return
        write_model_folder(self, save_directory, functools.partial(super().save_pretrained, **kwargs))


@torch.no_grad()
def _align_cpu_tensors(model: nn.Module) -> None:
    """Copy loaded CPU tensors that are not 64-byte aligned into fresh (aligned) memory.

    safetensors tensors are views into the file at 8-byte offsets, and CPU GEMM kernels accumulate in a different
    order on unaligned memory: a reloaded model's logits differed from the saved model's by ~2e-9. Aligned like
    freshly built weights, a save/load round trip is bit-exact."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
            tensor.data = tensor.data.clone()


def _is_molex_parameter(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key or "router" in key
