"""Expert packs on disk: each expert a standard PEFT LoRA folder, plus what MoLEx needs to route to them.

    <pack>/molex_pack_config.json   MoLExAdapterConfig of the pack (`adapter_config.json` in packs saved before)
    <pack>/index.json               experts, their pack, router column, modules, rank; the backbone they fit
    <pack>/router.safetensors       router rows of these experts, one tensor per router
    <pack>/expert_<i>/adapter_config.json + adapter_model.safetensors   plain PEFT LoRA (peft_type "LORA")

A model saved with `save_pretrained` holds its experts as such a pack under `experts/`. A single expert folder loads
onto the vanilla backbone with `PeftModel.from_pretrained(backbone, folder)` and reproduces that expert at gate 1.

A pack is written whole into a hidden sibling folder and swapped in (atomic_saves.py), with one save id in its
index and in every safetensors file; loading checks every file first (pack_reader.py).
"""

import json
import os
import shutil

import torch
from safetensors.torch import save_file
from torch import nn

from .adapter_config import LEGACY_PACK_CONFIG_NAME, PACK_CONFIG_NAME, MoLExAdapterConfig
from .atomic_saves import (
    PACK_SAVE_ID_KEY,
    SAVE_ID_KEY,
    add_safetensors_metadata,
    check_replaceable,
    content_save_id,
    make_staging,
    resolve_target,
    swap_into_place,
)
from .pack_reader import (
    INDEX_NAME,
    PACK_FORMAT,
    PEFT_CONFIG_NAME,
    PEFT_WEIGHTS_NAME,
    ROUTER_WEIGHTS_NAME,
    check_entry_agrees,
    check_one_save,
    checked_entries,
    read_expert_weights,
    read_index,
    read_pack_config,
    read_router_rows,
)
from .safe_files import FolderFiles


PACK_FILES = (PACK_CONFIG_NAME, LEGACY_PACK_CONFIG_NAME, INDEX_NAME, ROUTER_WEIGHTS_NAME)
HUB_PACK_PATTERNS = [f"{name}" for name in PACK_FILES] + [f"*/{name}" for name in (*PACK_FILES, PEFT_WEIGHTS_NAME)]
__all__ = ["HUB_PACK_PATTERNS", "PACK_FORMAT", "load_expert_pack", "peft_lora_config", "save_expert_pack"]


def peft_lora_config(adapter: MoLExAdapterConfig, module_paths: list[str]) -> dict:
    """A `LoraConfig`-compatible dict: stock peft loads it onto the vanilla backbone."""
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": adapter.base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": adapter.r,
        "lora_alpha": adapter.lora_alpha,
        "lora_dropout": adapter.lora_dropout,
        # Full module paths: peft matches list entries as suffixes, so these hit exactly the adapted linears.
        "target_modules": sorted(module_paths),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
    }


def _resolve_names(adapter: MoLExAdapterConfig, names: list[str] | None) -> list[int]:
    expert_names, packs = adapter.expert_names, adapter.pack_of_expert()
    if names is None:
        return list(range(len(expert_names)))
    selected = set()
    for name in names:
        if name in expert_names:
            selected.add(expert_names.index(name))
        elif name in adapter.expert_packs:
            selected.update(i for i, pack in enumerate(packs) if pack == name)
        else:
            raise ValueError(
                f"Unknown expert or pack {name!r}; experts: {expert_names}, packs: {list(adapter.expert_packs)}"
            )
    return sorted(selected)


def write_tensors(tensors: dict[str, torch.Tensor], path: str, save_id: str) -> None:
    """A safetensors file stamped with `save_id`, the same bytes for the same tensors: the id is added in a second
    step because safetensors writes its metadata map in an arbitrary order."""
    save_file({name: tensor.cpu() for name, tensor in tensors.items()}, path, {"format": "pt"})
    add_safetensors_metadata(path, {SAVE_ID_KEY: save_id})


def _write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def is_pack_folder(path: str) -> bool:
    """Whether `path` holds an expert pack (its index.json says so): a save may replace it."""
    try:
        return read_index(FolderFiles(path)).get("format") == PACK_FORMAT
    except (OSError, ValueError):
        return False


def _pack_contents(model: nn.Module, indices: list[int]) -> tuple[dict, dict, MoLExAdapterConfig, dict]:
    """What a pack of these experts holds: per expert its PEFT tensors, the router rows, the pack config and the
    index (without its save id)."""
    adapter = model.config.adapter
    packs_of_expert = adapter.pack_of_expert()
    layers = model.expert_layers()
    experts = {
        adapter.expert_names[index]: {
            f"base_model.model.{path}.{key}.weight": tensor
            for path, layer in layers.items()
            for key, tensor in (
                ("lora_A", layer.stacked_lora_a()[index].detach().contiguous()),
                ("lora_B", layer.stacked_lora_b()[index].detach().T.contiguous()),
            )
        }
        for index in indices
    }
    rows = {name: router.full_weight()[indices].detach().contiguous() for name, router in model.routers().items()}
    pack_sizes: dict[str, int] = {}
    for index in indices:
        pack_sizes[packs_of_expert[index]] = pack_sizes.get(packs_of_expert[index], 0) + 1
    # A pack may hold fewer experts than the host's top_k; the host's top_k is what routes them once loaded.
    top_k = min(adapter.top_k, len(indices))
    pack_config = MoLExAdapterConfig.from_dict(
        {**adapter.to_dict(), "expert_packs": pack_sizes, "frozen_packs": [], "top_k": top_k}
    )
    backbone = model.config.backbone_config
    index_document = {
        "format": PACK_FORMAT,
        "version": 1,
        "backbone": {
            "model_type": backbone.model_type,
            "hidden_size": backbone.hidden_size,
            "num_hidden_layers": backbone.num_hidden_layers,
            "name_or_path": adapter.base_model_name_or_path,
        },
        "experts": [
            {
                "name": adapter.expert_names[index],
                "pack": packs_of_expert[index],
                "router_column": column,
                "r": adapter.r,
                "lora_alpha": adapter.lora_alpha,
                "modules": sorted(layers),
            }
            for column, index in enumerate(indices)
        ],
    }
    return experts, rows, pack_config, index_document


def save_expert_pack(
    model: nn.Module, directory: str | os.PathLike, names: list[str] | None, save_id: str | None = None
) -> list[str]:
    """Write the selected experts as a pack folder. Written to a temporary sibling and swapped into place, so a
    crash (even kill -9) leaves the previous pack or the new one, never a mix or nothing. `save_id` (by default a
    hash of the pack's content) goes into the index and every safetensors file; a model save passes its own."""
    adapter = model.config.adapter
    indices = _resolve_names(adapter, names)
    directory = resolve_target(directory)
    check_replaceable(directory, is_pack_folder, "expert packs")
    experts, rows, pack_config, index_document = _pack_contents(model, indices)
    tensors = {f"{name}/{key}": value for name, group in experts.items() for key, value in group.items()}
    save_id = save_id or content_save_id({**tensors, **rows}, pack_config.to_dict(), index_document)
    module_paths = list(model.expert_layers())
    staging = make_staging(directory, ".experts-")
    try:
        for name, group in experts.items():
            folder = os.path.join(staging, name)
            os.makedirs(folder)
            write_tensors(group, os.path.join(folder, PEFT_WEIGHTS_NAME), save_id)
            _write_json(os.path.join(folder, PEFT_CONFIG_NAME), peft_lora_config(adapter, module_paths))
        write_tensors(rows, os.path.join(staging, ROUTER_WEIGHTS_NAME), save_id)
        pack_config.save_pretrained(staging)
        _write_json(os.path.join(staging, INDEX_NAME), {**index_document, PACK_SAVE_ID_KEY: save_id})
        swap_into_place(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [adapter.expert_names[i] for i in indices]


def _pack_root(path_or_repo_id: str | os.PathLike, revision: str | None) -> str:
    path = os.fspath(path_or_repo_id)
    if not os.path.isdir(path):
        from huggingface_hub import snapshot_download

        path = snapshot_download(path, revision=revision, allow_patterns=HUB_PACK_PATTERNS)
    for root in (path, os.path.join(path, "experts")):
        has_config = any(
            os.path.lexists(os.path.join(root, name)) for name in (PACK_CONFIG_NAME, LEGACY_PACK_CONFIG_NAME)
        )
        if os.path.lexists(os.path.join(root, INDEX_NAME)) and has_config:
            return root
    raise FileNotFoundError(
        f"{path_or_repo_id}: no expert pack ({INDEX_NAME} + {PACK_CONFIG_NAME}) here or in experts/"
    )


def _check_compatible(root: str, pack: MoLExAdapterConfig, index: dict, model: nn.Module) -> None:
    own = model.config.adapter
    backbone = model.config.backbone_config
    checks = [
        ("r", pack.r, own.r),
        ("lora_alpha", pack.lora_alpha, own.lora_alpha),
        ("target_modules", sorted(pack.target_modules), sorted(own.target_modules)),
        ("layers_to_transform", pack.layers_to_transform, own.layers_to_transform),
        ("router_scope", pack.router_scope, own.router_scope),
        ("router_granularity", pack.router_granularity, own.router_granularity),
        ("backbone.model_type", index["backbone"]["model_type"], backbone.model_type),
        ("backbone.hidden_size", index["backbone"]["hidden_size"], backbone.hidden_size),
        ("backbone.num_hidden_layers", index["backbone"]["num_hidden_layers"], backbone.num_hidden_layers),
    ]
    for field_name, theirs, ours in checks:
        if theirs != ours:
            raise ValueError(f"Expert pack {root}: `{field_name}` is {theirs!r} but this model has {ours!r}")
    clashes = sorted(set(pack.expert_packs) & set(own.expert_packs))
    if clashes:
        raise ValueError(f"Expert pack {root}: `expert_packs` {clashes} already exist in this model")


def load_expert_pack(
    model: nn.Module, path_or_repo_id: str | os.PathLike, trainable: bool, revision: str | None
) -> list[str]:
    """Append the pack's experts and router rows to `model` (a MoLExForAudioClassification); returns the new pack
    names. Everything is read and checked first; the model changes only once nothing can fail any more, so a refused
    pack leaves the model exactly as it was."""
    root = _pack_root(path_or_repo_id, revision)
    files = FolderFiles(root)
    pack, config_name = read_pack_config(files)
    index = read_index(files)
    _check_compatible(root, pack, index, model)
    entries = checked_entries(root, index, pack, config_name)
    for entry in entries:
        check_entry_agrees(files, entry, pack, config_name)
    layers = model.expert_layers()
    weights = read_expert_weights(files, entries, layers, model.config.adapter.r)
    routers = model.routers()
    router_rows = read_router_rows(files, routers, len(entries))
    check_one_save(files, index, entries)

    start = 0
    adapter = model.config.adapter
    for pack_name, size in pack.expert_packs.items():
        rows = slice(start, start + size)
        for path, layer in layers.items():
            layer.add_pack(size)
            with torch.no_grad():
                layer.lora_A[-1].copy_(weights[path][0][rows])
                layer.lora_B[-1].copy_(weights[path][1][rows])
        for name, router in routers.items():
            router.add_pack(size, rows=router_rows[name][rows])
        adapter.expert_packs = {**adapter.expert_packs, pack_name: size}
        if not trainable:
            adapter.frozen_packs = [*adapter.frozen_packs, pack_name]
        start += size
    adapter.num_experts = sum(adapter.expert_packs.values())
    return list(pack.expert_packs)
