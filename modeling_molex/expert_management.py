"""What a MoLEx model offers around its experts: which parameters train, where the experts and routers are, packs
added / saved / loaded, and peft-style switches (`disable_adapter`, `set_active_packs`).

A mixin of `MoLExForAudioClassification`, kept apart from the model's construction and forward.
"""

import contextlib
import os
from collections.abc import Iterator

import torch

from .experts_io import load_expert_pack, save_expert_pack
from .injection import block_router_name, encoder_blocks
from .layers import MoLExLinear
from .router import TopKRouter
from .routing_state import experts_disabled


class MoLExExpertsMixin:
    """Expert management for `MoLExForAudioClassification` (needs `self.backbone`, `self.config`, the back-end)."""

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

    # ----- peft-style switches --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Inside this block, forwards run the frozen backbone alone (no expert deltas), as peft's `disable_adapter`.

        Only calls made in this thread (this `contextvars` context) are affected: another thread sharing the model
        keeps its experts."""
        with experts_disabled():
            yield

    @property
    def active_packs(self) -> list[str]:
        """Packs the routers may choose from (all by default); see `set_active_packs`."""
        packs = getattr(self, "_active_packs", None)
        return list(self.config.adapter.expert_packs) if packs is None else list(packs)

    def set_active_packs(self, packs: str | list[str] | None) -> None:
        """Route only to the experts of these packs (peft's `set_adapter`); `None` makes every pack active again.

        The other experts get router probability 0 (their logits are masked before the softmax), so the model
        behaves exactly as if only these packs existed. Model-wide, like peft's active adapter; not saved."""
        adapter = self.config.adapter
        if packs is None:
            self._active_packs = None
            return
        packs = [packs] if isinstance(packs, str) else list(packs)
        unknown = [name for name in packs if name not in adapter.expert_packs]
        if not packs or unknown:
            raise ValueError(f"Unknown expert pack(s) {unknown or packs}; packs: {list(adapter.expert_packs)}")
        active_experts = sum(adapter.expert_packs[name] for name in set(packs))
        if active_experts < adapter.top_k:
            raise ValueError(
                f"Packs {packs} hold {active_experts} experts, fewer than `top_k`={adapter.top_k}; activate more packs"
            )
        self._active_packs = tuple(name for name in adapter.expert_packs if name in packs)

    def active_expert_mask(self) -> torch.Tensor | None:
        """(E,) bool, True for experts of active packs; None when every pack is active."""
        packs = getattr(self, "_active_packs", None)
        if packs is None:
            return None
        return torch.tensor([pack in packs for pack in self.config.adapter.pack_of_expert()], dtype=torch.bool)

    # ----- experts in and out ---------------------------------------------------------------------------------

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
