"""Reading an expert pack from disk, checked before anything reaches the model.

Every file is opened through `FolderFiles` (regular files inside the pack only: no links out of it, no FIFOs or
devices; the Hub cache's links into its own blobs excepted) and every JSON file is bounded in size and depth. The
pack's files must agree with each other, and each disagreement is refused naming both files and the field:

- index.json and molex_pack_config.json: the expert count, which pack each router column belongs to, `r`,
  `lora_alpha`, and the modules (each must be one the config's `target_modules` selects);
- each expert's PEFT adapter_config.json and the pack config: `r`, `lora_alpha`, the modules;
- all files of one save: the save id (see atomic_saves.py);
- no two experts may be the same file (a hard link; symbolic links are refused anyway).

Tensors must have the model's shapes and be finite.
"""

import os

import torch
from torch import nn

from .adapter_config import LEGACY_PACK_CONFIG_NAME, MOLEX_PEFT_TYPE, PACK_CONFIG_NAME, MoLExAdapterConfig
from .atomic_saves import check_same_save, pack_save_ids
from .safe_files import FolderFiles, load_finite_tensors, read_json, read_json_object


INDEX_NAME = "index.json"
ROUTER_WEIGHTS_NAME = "router.safetensors"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"  # of each expert folder: a plain PEFT LoRA adapter
PACK_FORMAT = "molex-expert-pack"


def read_pack_config(files: FolderFiles) -> tuple[MoLExAdapterConfig, str]:
    """The pack's MoLExAdapterConfig and the name of the file it came from."""
    name = PACK_CONFIG_NAME if os.path.lexists(os.path.join(files.root, PACK_CONFIG_NAME)) else LEGACY_PACK_CONFIG_NAME
    path = files.file(name)
    data = read_json_object(path)
    if data.get("peft_type") != MOLEX_PEFT_TYPE:
        raise ValueError(f"{path}: `peft_type` is {data.get('peft_type')!r}, expected {MOLEX_PEFT_TYPE!r}")
    try:
        return MoLExAdapterConfig.from_dict(data), name
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from error


def read_index(files: FolderFiles) -> dict:
    path = files.file(INDEX_NAME)
    index = read_json(path)
    if not isinstance(index, dict) or index.get("format") != PACK_FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise ValueError(f"{path}: `format` is {found!r}, expected {PACK_FORMAT!r}")
    for key in ("backbone", "experts"):
        if key not in index:
            raise ValueError(f"{path}: no `{key}` field")
    return index


def checked_entries(root: str, index: dict, pack: MoLExAdapterConfig, config_name: str) -> list[dict]:
    """Index entries in router-column order, each naming a plain expert folder inside the pack, agreeing with the
    pack config on the expert count and on the pack of every router column."""
    path = os.path.join(root, INDEX_NAME)
    entries = index["experts"]
    expected = sum(pack.expert_packs.values())
    if not isinstance(entries, list) or len(entries) != expected:
        count = len(entries) if isinstance(entries, list) else type(entries).__name__
        raise ValueError(
            f"{path}: `experts` lists {count} experts, the pack config declares {expected} "
            f"(`expert_packs` of {os.path.join(root, config_name)})"
        )
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
    ordered = sorted(entries, key=lambda entry: entry["router_column"])
    config_path = os.path.join(root, config_name)
    for column, (entry, pack_name) in enumerate(zip(ordered, pack.pack_of_expert(), strict=True)):
        if "pack" in entry and entry["pack"] != pack_name:
            raise ValueError(
                f"{path} and {config_path} disagree on `pack` of router column {column}: the index puts expert "
                f"{entry['name']!r} in {entry['pack']!r}, the config's `expert_packs` {pack.expert_packs} in "
                f"{pack_name!r}"
            )
    return ordered


def check_entry_agrees(files: FolderFiles, entry: dict, pack: MoLExAdapterConfig, config_name: str) -> None:
    """One expert's index entry and its PEFT adapter_config.json against the pack config."""
    index_path, config_path = os.path.join(files.root, INDEX_NAME), os.path.join(files.root, config_name)
    peft_path = _expert_file(files, entry["name"], PEFT_CONFIG_NAME)
    peft = read_json_object(peft_path)
    for source, values in ((index_path, entry), (peft_path, peft)):
        for field in ("r", "lora_alpha"):
            if field in values and values[field] != getattr(pack, field):
                raise ValueError(
                    f"{source} and {config_path} disagree on `{field}` of expert {entry['name']!r}: "
                    f"{values[field]!r} vs {getattr(pack, field)!r}"
                )
        modules = values.get("modules" if source == index_path else "target_modules")
        if modules is None:
            continue
        outside = [module for module in modules if not _selected(module, pack.target_modules)]
        if not isinstance(modules, list) or outside:
            raise ValueError(
                f"{source} and {config_path} disagree on the modules of expert {entry['name']!r}: "
                f"{outside or modules!r} not selected by `target_modules` {pack.target_modules}"
            )
    if peft.get("peft_type") != "LORA":
        raise ValueError(f"{peft_path}: `peft_type` is {peft.get('peft_type')!r}, expected 'LORA'")
    if "modules" in entry and sorted(peft.get("target_modules") or []) != sorted(entry["modules"]):
        raise ValueError(
            f"{peft_path} and {index_path} disagree on the modules of expert {entry['name']!r} "
            "(`target_modules` vs `modules`)"
        )


def _selected(module: object, targets: list[str]) -> bool:
    return isinstance(module, str) and any(module == t or module.endswith("." + t) for t in targets)


def _expert_file(files: FolderFiles, name: str, filename: str) -> str:
    try:
        return files.file(f"{name}/{filename}")
    except FileNotFoundError:
        raise FileNotFoundError(f"Expert pack {files.root}: expert {name!r} has no {filename}") from None


def read_expert_weights(
    files: FolderFiles, entries: list[dict], layers: dict[str, nn.Module], rank: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per expert layer: stacked (E, r, d_in) A and (E, r, d_out) B of the pack, every shape checked."""
    stacks: dict[str, tuple[list, list]] = {path: ([], []) for path in layers}
    seen: dict[tuple[int, int], str] = {}
    for entry in entries:
        weights_path = _expert_file(files, entry["name"], PEFT_WEIGHTS_NAME)
        identity = files.identity(weights_path)
        if identity in seen and not files.is_hub_cache:  # the Hub cache shares one blob between equal files
            raise ValueError(
                f"{weights_path} is the same file as {seen[identity]} (a hard link): each expert needs its own weights"
            )
        seen[identity] = weights_path
        tensors = load_finite_tensors(weights_path)
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


def read_router_rows(files: FolderFiles, routers: dict[str, nn.Module], num_experts: int) -> dict[str, torch.Tensor]:
    path = files.file(ROUTER_WEIGHTS_NAME)
    rows = load_finite_tensors(path)
    missing = sorted(set(routers) - set(rows))
    if missing:
        raise KeyError(f"{path}: no rows for routers {missing[:5]}")
    for name, router in routers.items():
        expected = (num_experts, router.hidden_size)
        if tuple(rows[name].shape) != expected:
            raise ValueError(f"{path}: router {name!r} rows have shape {tuple(rows[name].shape)}, expected {expected}")
    return rows


def check_one_save(files: FolderFiles, index: dict, entries: list[dict]) -> None:
    check_same_save(pack_save_ids(files, index, [entry["name"] for entry in entries]), files.root)
