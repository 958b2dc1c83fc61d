"""Expert packs on disk: each expert a standard PEFT LoRA folder, plus what MoLEx needs to route to them.

    <pack>/molex_pack_config.json   MoLExAdapterConfig of the pack (`adapter_config.json` in packs saved before)
    <pack>/index.json               experts, their pack, router column, modules, rank; the backbone they fit
    <pack>/router.safetensors       router rows of these experts, one tensor per router
    <pack>/expert_<i>/adapter_config.json + adapter_model.safetensors   plain PEFT LoRA (peft_type "LORA")

A model saved with `save_pretrained` holds its experts as such a pack under `experts/`. A single expert folder loads
onto the vanilla backbone with `PeftModel.from_pretrained(backbone, folder)` and reproduces that expert at gate 1.
"""

import json
import os
import shutil
import tempfile

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .adapter_config import LEGACY_PACK_CONFIG_NAME, PACK_CONFIG_NAME, MoLExAdapterConfig


INDEX_NAME = "index.json"
ROUTER_WEIGHTS_NAME = "router.safetensors"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PACK_FORMAT = "molex-expert-pack"
PEFT_CONFIG_NAME = "adapter_config.json"  # of each expert folder: a plain PEFT LoRA adapter
PACK_FILES = (PACK_CONFIG_NAME, LEGACY_PACK_CONFIG_NAME, INDEX_NAME, ROUTER_WEIGHTS_NAME)
HUB_PACK_PATTERNS = [f"{name}" for name in PACK_FILES] + [f"*/{name}" for name in (*PACK_FILES, PEFT_WEIGHTS_NAME)]


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


def _write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def save_expert_pack(model: nn.Module, directory: str | os.PathLike, names: list[str] | None) -> list[str]:
    """Write the selected experts as a pack folder. Written to a temporary sibling and renamed into place, so a
    crash never leaves a half-written pack."""
    adapter = model.config.adapter
    indices = _resolve_names(adapter, names)
    packs_of_expert = adapter.pack_of_expert()
    layers = model.expert_layers()
    directory = os.fspath(directory)
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".experts-", dir=parent)
    try:
        index_entries = []
        for column, index in enumerate(indices):
            name = adapter.expert_names[index]
            folder = os.path.join(staging, name)
            os.makedirs(folder)
            tensors = {}
            for path, layer in layers.items():
                tensors[f"base_model.model.{path}.lora_A.weight"] = layer.stacked_lora_a()[index].detach().contiguous()
                tensors[f"base_model.model.{path}.lora_B.weight"] = (
                    layer.stacked_lora_b()[index].detach().T.contiguous()
                )
            save_file({k: v.cpu() for k, v in tensors.items()}, os.path.join(folder, PEFT_WEIGHTS_NAME))
            _write_json(os.path.join(folder, PEFT_CONFIG_NAME), peft_lora_config(adapter, list(layers)))
            index_entries.append(
                {
                    "name": name,
                    "pack": packs_of_expert[index],
                    "router_column": column,
                    "r": adapter.r,
                    "lora_alpha": adapter.lora_alpha,
                    "modules": sorted(layers),
                }
            )
        rows = {
            name: router.full_weight()[indices].detach().cpu().contiguous() for name, router in model.routers().items()
        }
        save_file(rows, os.path.join(staging, ROUTER_WEIGHTS_NAME))
        pack_sizes: dict[str, int] = {}
        for index in indices:
            pack_sizes[packs_of_expert[index]] = pack_sizes.get(packs_of_expert[index], 0) + 1
        # A pack may hold fewer experts than the host's top_k; the host's top_k is what routes them once loaded.
        top_k = min(adapter.top_k, len(indices))
        pack_config = MoLExAdapterConfig.from_dict(
            {**adapter.to_dict(), "expert_packs": pack_sizes, "frozen_packs": [], "top_k": top_k}
        )
        pack_config.save_pretrained(staging)
        backbone = model.config.backbone_config
        _write_json(
            os.path.join(staging, INDEX_NAME),
            {
                "format": PACK_FORMAT,
                "version": 1,
                "backbone": {
                    "model_type": backbone.model_type,
                    "hidden_size": backbone.hidden_size,
                    "num_hidden_layers": backbone.num_hidden_layers,
                    "name_or_path": adapter.base_model_name_or_path,
                },
                "experts": index_entries,
            },
        )
        _replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [adapter.expert_names[i] for i in indices]


def _replace_directory(staging: str, directory: str) -> None:
    if not os.path.exists(directory):
        os.replace(staging, directory)
        return
    retired = tempfile.mkdtemp(prefix=".experts-old-", dir=os.path.dirname(os.path.abspath(directory)))
    os.rmdir(retired)
    os.replace(directory, retired)
    os.replace(staging, directory)
    shutil.rmtree(retired, ignore_errors=True)


def _pack_root(path_or_repo_id: str | os.PathLike, revision: str | None) -> str:
    path = os.fspath(path_or_repo_id)
    if not os.path.isdir(path):
        from huggingface_hub import snapshot_download

        path = snapshot_download(path, revision=revision, allow_patterns=HUB_PACK_PATTERNS)
    for root in (path, os.path.join(path, "experts")):
        has_config = any(
            os.path.isfile(os.path.join(root, name)) for name in (PACK_CONFIG_NAME, LEGACY_PACK_CONFIG_NAME)
        )
        if os.path.isfile(os.path.join(root, INDEX_NAME)) and has_config:
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


def _read_index(root: str) -> dict:
    path = os.path.join(root, INDEX_NAME)
    with open(path, encoding="utf-8") as handle:
        try:
            index = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(index, dict) or index.get("format") != PACK_FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise ValueError(f"{path}: `format` is {found!r}, expected {PACK_FORMAT!r}")
    for key in ("backbone", "experts"):
        if key not in index:
            raise ValueError(f"{path}: no `{key}` field")
    return index


def _checked_entries(root: str, index: dict, pack: MoLExAdapterConfig) -> list[dict]:
    """Index entries in router-column order, each naming a plain expert folder inside the pack."""
    path = os.path.join(root, INDEX_NAME)
    entries = index["experts"]
    expected = sum(pack.expert_packs.values())
    if not isinstance(entries, list) or len(entries) != expected:
        count = len(entries) if isinstance(entries, list) else type(entries).__name__
        raise ValueError(f"{path}: `experts` lists {count} experts, the pack config declares {expected}")
    real_root = os.path.realpath(root)
    for number, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        plain = (
            isinstance(name, str)
            and name not in ("", ".", "..")
            and os.path.basename(name) == name
            and "/" not in name
            and "\\" not in name
        )
        folder = os.path.realpath(os.path.join(root, name)) if plain else ""
        if not plain or os.path.dirname(folder) != real_root:
            raise ValueError(
                f"{path}: entry {number} names expert {name!r}; an expert name must be a plain folder name inside "
                "the pack (no path separators, '..' or absolute paths)"
            )
    columns = sorted(entry.get("router_column") for entry in entries if isinstance(entry.get("router_column"), int))
    if columns != list(range(expected)):
        raise ValueError(f"{path}: `router_column` values must be 0..{expected - 1}, each once")
    if len({entry["name"] for entry in entries}) != expected:
        raise ValueError(f"{path}: expert names are not unique")
    return sorted(entries, key=lambda entry: entry["router_column"])


def _read_expert_weights(
    root: str, entries: list[dict], layers: dict[str, nn.Module], rank: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per expert layer: stacked (E, r, d_in) A and (E, r, d_out) B of the pack, every shape checked."""
    stacks: dict[str, tuple[list, list]] = {path: ([], []) for path in layers}
    for entry in entries:
        weights_path = os.path.join(root, entry["name"], PEFT_WEIGHTS_NAME)
        if not os.path.isfile(weights_path):
            raise FileNotFoundError(f"Expert pack {root}: expert {entry['name']!r} has no {PEFT_WEIGHTS_NAME}")
        tensors = load_file(weights_path)
        for path, layer in layers.items():
            for key, expected, transpose, store in (
                ("lora_A", (rank, layer.in_features), False, stacks[path][0]),
                ("lora_B", (layer.out_features, rank), True, stacks[path][1]),
            ):
                name = f"base_model.model.{path}.{key}.weight"
                if name not in tensors:
                    raise KeyError(f"{weights_path}: missing tensor {name!r}")
                if tuple(tensors[name].shape) != expected:
                    raise ValueError(
                        f"{weights_path}: tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {expected}"
                    )
                store.append(tensors[name].T if transpose else tensors[name])
    return {path: (torch.stack(a), torch.stack(b)) for path, (a, b) in stacks.items()}


def _read_router_rows(root: str, routers: dict[str, nn.Module], num_experts: int) -> dict[str, torch.Tensor]:
    path = os.path.join(root, ROUTER_WEIGHTS_NAME)
    rows = load_file(path)
    missing = sorted(set(routers) - set(rows))
    if missing:
        raise KeyError(f"{path}: no rows for routers {missing[:5]}")
    for name, router in routers.items():
        expected = (num_experts, router.hidden_size)
        if tuple(rows[name].shape) != expected:
            raise ValueError(f"{path}: router {name!r} rows have shape {tuple(rows[name].shape)}, expected {expected}")
    return rows


def load_expert_pack(
    model: nn.Module, path_or_repo_id: str | os.PathLike, trainable: bool, revision: str | None
) -> list[str]:
    """Append the pack's experts and router rows to `model` (a MoLExForAudioClassification); returns the new pack
    names. Everything is read and checked first; the model changes only once nothing can fail any more, so a refused
    pack leaves the model exactly as it was."""
    root = _pack_root(path_or_repo_id, revision)
    pack = MoLExAdapterConfig.from_pretrained(root)
    index = _read_index(root)
    _check_compatible(root, pack, index, model)
    entries = _checked_entries(root, index, pack)
    layers = model.expert_layers()
    weights = _read_expert_weights(root, entries, layers, model.config.adapter.r)
    routers = model.routers()
    router_rows = _read_router_rows(root, routers, len(entries))

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
