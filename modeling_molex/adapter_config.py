"""`MoLExAdapterConfig`: where the LoRA experts go, how many there are and how the router picks them.

It is saved like a peft adapter config (sorted keys, `peft_type`), but as `molex_pack_config.json`: a file named
`adapter_config.json` would make peft entry points (`PeftConfig.from_pretrained`, transformers' adapter detection)
read it and fail on the unknown `peft_type` "MOLEX". Packs written before that name are still read. It is a plain
dataclass, not a `PeftConfig` subclass: Hub remote code may import peft only under `try`, so a class that the
model's config needs cannot derive from a peft class (and peft 0.21's closed `PeftType` enum could not load it).
"""

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from .finite_checks import finite_number


PACK_CONFIG_NAME = "molex_pack_config.json"
LEGACY_PACK_CONFIG_NAME = "adapter_config.json"  # read for packs saved before the rename
MOLEX_PEFT_TYPE = "MOLEX"
ROUTER_GRANULARITIES = ("token", "utterance")
ROUTER_SCOPES = ("block", "module")


@dataclass
class MoLExAdapterConfig:
    """Configuration of the LoRA experts and their routers.

    Args:
        num_experts (`int`, defaults to 8):
            Experts in the first (base) pack. Ignored when `expert_packs` is given.
        expert_packs (`dict[str, int]`, *optional*):
            Ordered packs of experts, `{pack_name: num_experts}`. Packs exist so that experts added later for a new
            domain (`add_experts`, `load_experts`) keep their own frozen/trainable state and can be shipped alone.
            Defaults to `{"base": num_experts}`.
        top_k (`int`, defaults to 2):
            Experts that fire per routing decision. The other experts get an exact zero weight.
        r (`int`, defaults to 8):
            Rank of every expert.
        lora_alpha (`float`, defaults to 16):
            LoRA scaling numerator: an expert's delta is `(lora_alpha / r) * B @ A @ x`, as in PEFT LoRA. A finite
            number > 0.
        lora_dropout (`float`, defaults to 0.0):
            Dropout on the expert input, as in PEFT LoRA, in [0, 1).
        target_modules (`list[str]`, *optional*):
            Names of the `nn.Linear` modules inside each transformer block that carry experts, matched as a suffix
            of the module path inside the block (e.g. `"q_proj"` matches `attention.q_proj`). `None` (default):
            the six projections of the backbone family, filled in by `MoLExConfig` (`q_proj`, `k_proj`, `v_proj`,
            `out_proj` and `intermediate_dense`, `output_dense` for the SSL families, `fc1`, `fc2` for Whisper).
        layers_to_transform (`list[int]`, *optional*):
            Transformer blocks that carry experts; all blocks when `None`.
        router_granularity (`str`, defaults to `"utterance"`):
            `"utterance"`: one decision per clip, from the masked mean of the block input (the paper's reading of
            "the router picks experts per input"; it is also the cheap path: only k experts are computed).
            `"token"`: one decision per frame (classic MoE).
        router_scope (`str`, defaults to `"block"`):
            `"block"`: one router per transformer block, shared by the experts of all targeted modules of that
            block and fed with the block input. `"module"`: one router per targeted linear, fed with its input.
        router_noise_std (`float`, defaults to 0.0):
            Standard deviation of Gaussian noise added to router logits in training (noisy top-k gating). This
            and the three loss weights below: finite numbers >= 0.
        router_expert_dropout (`float`, defaults to 0.0):
            Expert dropout in training: each expert is hidden from each routing decision with this probability
            (at least `top_k` always stay), a remedy for routers that collapse onto a few experts. In [0, 1).
        normalize_top_k (`bool`, defaults to `True`):
            Renormalise the k selected probabilities to sum to 1. Ignored for `top_k == 1`, where the raw
            probability is kept so that the router still receives a gradient (Switch Transformer).
        load_balance_coef (`float`, defaults to 0.01):
            Weight of the Switch/Mixtral load-balancing loss (padding frames masked out).
        orthogonality_coef (`float`, defaults to 0.01):
            Weight of the expert orthogonality loss: squared cosine overlap between the row spaces of different
            experts' A matrices (the paper's "orthogonality regularisation").
        router_z_loss_coef (`float`, defaults to 0.001):
            Weight of the router z-loss (ST-MoE), which keeps router logits small and float32 softmax stable.
        frozen_packs (`list[str]`, defaults to `[]`):
            Packs whose experts and router rows are frozen (set by `add_experts`, so that domain adaptation keeps
            the old experts exactly as they were, also after a save/load round trip).
        base_model_name_or_path (`str`, *optional*):
            The SSL backbone the experts were trained on (Hub id or path); written into every exported expert.
    """

    num_experts: int = 8
    expert_packs: dict[str, int] | None = None
    top_k: int = 2
    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: list[str] | None = None
    layers_to_transform: list[int] | None = None
    router_granularity: Literal["token", "utterance"] = "utterance"
    router_scope: Literal["block", "module"] = "block"
    router_noise_std: float = 0.0
    router_expert_dropout: float = 0.0
    normalize_top_k: bool = True
    load_balance_coef: float = 0.01
    orthogonality_coef: float = 0.01
    router_z_loss_coef: float = 0.001
    frozen_packs: list[str] = field(default_factory=list)
    base_model_name_or_path: str | None = None
    peft_type: str = MOLEX_PEFT_TYPE

    def __post_init__(self):
        if self.expert_packs is None:
            self.expert_packs = {"base": self.num_experts}
        self.expert_packs = {str(name): size for name, size in dict(self.expert_packs).items()}
        for name, size in self.expert_packs.items():
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise ValueError(f"`expert_packs[{name!r}]` must be a positive int, got {size!r}")
        self.num_experts = sum(self.expert_packs.values())
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        if self.target_modules is not None:
            self.target_modules = list(self.target_modules)
        self.frozen_packs = list(self.frozen_packs)
        if self.layers_to_transform is not None:
            self.layers_to_transform = sorted({int(i) for i in self.layers_to_transform})
        self.validate()

    def validate(self) -> None:
        """Raise `ValueError` naming the field when a value cannot work."""
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"`r` must be a positive int, got {self.r!r}")
        if not isinstance(self.top_k, int) or not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"`top_k` must be an int in [1, num_experts={self.num_experts}], got {self.top_k!r}")
        finite_number("lora_alpha", self.lora_alpha, 0.0, low_open=True)
        finite_number("lora_dropout", self.lora_dropout, 0.0, 1.0, high_open=True)
        if self.target_modules is not None and (
            not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules)
        ):
            raise ValueError(f"`target_modules` must be a non-empty list of module names, got {self.target_modules!r}")
        if self.layers_to_transform is not None and (
            not self.layers_to_transform or min(self.layers_to_transform) < 0
        ):
            raise ValueError(
                f"`layers_to_transform` must be non-negative block indices, got {self.layers_to_transform!r}"
            )
        if self.router_granularity not in ROUTER_GRANULARITIES:
            raise ValueError(
                f"`router_granularity` must be one of {ROUTER_GRANULARITIES}, got {self.router_granularity!r}"
            )
        if self.router_scope not in ROUTER_SCOPES:
            raise ValueError(f"`router_scope` must be one of {ROUTER_SCOPES}, got {self.router_scope!r}")
        finite_number("router_expert_dropout", self.router_expert_dropout, 0.0, 1.0, high_open=True)
        for name in ("router_noise_std", "load_balance_coef", "orthogonality_coef", "router_z_loss_coef"):
            finite_number(name, getattr(self, name), 0.0)
        unknown_packs = sorted(set(self.frozen_packs) - set(self.expert_packs))
        if unknown_packs:
            raise ValueError(f"`frozen_packs` names packs not in `expert_packs`: {unknown_packs}")
        if self.peft_type != MOLEX_PEFT_TYPE:
            raise ValueError(f"`peft_type` must be {MOLEX_PEFT_TYPE!r} for a MoLEx adapter, got {self.peft_type!r}")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r

    @property
    def expert_names(self) -> list[str]:
        """Global expert names, `expert_0 ... expert_{E-1}`, in pack order (the router's column order)."""
        return [f"expert_{i}" for i in range(self.num_experts)]

    def pack_of_expert(self) -> list[str]:
        """The pack name of each expert, in router column order."""
        return [name for name, size in self.expert_packs.items() for _ in range(size)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MoLExAdapterConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown MoLExAdapterConfig field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**data)

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write `molex_pack_config.json` (PEFT style: sorted keys, indented) and return its path."""
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, PACK_CONFIG_NAME)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2, sort_keys=True)
            handle.write("\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, subfolder: str | None = None) -> "MoLExAdapterConfig":
        """Read `molex_pack_config.json` (or a legacy MoLEx `adapter_config.json`) from a folder, or the file itself."""
        path = os.fspath(path)
        if subfolder:
            path = os.path.join(path, subfolder)
        if os.path.isdir(path):
            current = os.path.join(path, PACK_CONFIG_NAME)
            path = current if os.path.isfile(current) else os.path.join(path, LEGACY_PACK_CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No MoLEx adapter config at {path}")
        with open(path, encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not valid JSON ({error})") from error
        if data.get("peft_type") != MOLEX_PEFT_TYPE:
            raise ValueError(f"{path}: `peft_type` is {data.get('peft_type')!r}, expected {MOLEX_PEFT_TYPE!r}")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from error
