"""Put MoLEx experts and routers into a transformers speech SSL encoder, in place.

Every supported backbone (wav2vec2 / XLS-R, HuBERT, WavLM, data2vec-audio) keeps its transformer blocks in
`backbone.encoder.layers`. Targets are matched inside each block by module-path suffix, like peft's list form of
`target_modules`. Block routers are attached to their block (`<block>.molex_router`) and run as a forward pre-hook
on the block input, so the backbone's forward signatures stay untouched.
"""

from torch import nn

from .adapter_config import MoLExAdapterConfig
from .attention_patches import make_wavlm_attention_use_modules
from .layers import MoLExLinear
from .router import TopKRouter
from .routing_state import current_routing_state


def encoder_blocks(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's transformer blocks."""
    encoder = getattr(backbone, "encoder", None)
    layers = getattr(encoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(backbone).__name__} has no `encoder.layers`: not a supported speech SSL backbone")
    return layers


def block_router_name(block_index: int) -> str:
    return f"layer_{block_index}"


def _run_block_router(block: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook: route on the block input before any of the block's experts is called."""
    hidden_states = args[0] if args else kwargs["hidden_states"]  # (B, T, D)
    state = current_routing_state()
    state.records[block._molex_router_name] = block.molex_router(hidden_states, state.frame_mask, state.expert_mask)


def _make_router(adapter: MoLExAdapterConfig, hidden_size: int) -> TopKRouter:
    return TopKRouter(
        hidden_size,
        list(adapter.expert_packs.values()),
        adapter.top_k,
        granularity=adapter.router_granularity,
        noise_std=adapter.router_noise_std,
        expert_dropout=adapter.router_expert_dropout,
        normalize_top_k=adapter.normalize_top_k,
    )


def _matching_linears(block: nn.Module, target: str) -> list[str]:
    return [
        name
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear) and (name == target or name.endswith("." + target))
    ]


def inject_experts(backbone: nn.Module, adapter: MoLExAdapterConfig) -> dict[str, MoLExLinear]:
    """Wrap the targeted linears of the selected blocks in `MoLExLinear`; returns them keyed by backbone path."""
    if getattr(backbone.config, "model_type", None) == "wavlm":
        make_wavlm_attention_use_modules(backbone)
    blocks = encoder_blocks(backbone)
    selected = adapter.layers_to_transform if adapter.layers_to_transform is not None else range(len(blocks))
    pack_sizes = list(adapter.expert_packs.values())
    wrapped: dict[str, MoLExLinear] = {}
    for block_index in selected:
        if block_index >= len(blocks):
            raise ValueError(f"`layers_to_transform` names block {block_index}, the backbone has {len(blocks)}")
        block = blocks[block_index]
        if adapter.router_scope == "block":
            block.molex_router = _make_router(adapter, backbone.config.hidden_size)
            block._molex_router_name = block_router_name(block_index)
            block.register_forward_pre_hook(_run_block_router, with_kwargs=True)
        for target in adapter.target_modules:
            names = _matching_linears(block, target)
            if not names:
                available = sorted(name for name, m in block.named_modules() if isinstance(m, nn.Linear))
                raise ValueError(
                    f"`target_modules` entry {target!r} matches no nn.Linear in encoder block {block_index} of "
                    f"{type(backbone).__name__}; linears there: {available}"
                )
            for name in names:
                parent_name, _, child_name = name.rpartition(".")
                parent = block.get_submodule(parent_name) if parent_name else block
                base_layer = getattr(parent, child_name)
                if adapter.router_scope == "block":
                    router_name, router = block_router_name(block_index), None
                else:
                    router_name, router = (
                        f"{block_router_name(block_index)}.{name}",
                        _make_router(adapter, base_layer.in_features),
                    )
                expert_layer = MoLExLinear(
                    base_layer,
                    pack_sizes,
                    adapter.r,
                    adapter.lora_alpha,
                    adapter.lora_dropout,
                    router_name,
                    router,
                )
                setattr(parent, child_name, expert_layer)
                wrapped[f"encoder.layers.{block_index}.{name}"] = expert_layer
    return wrapped
