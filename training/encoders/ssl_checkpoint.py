"""Atomic, resumable pretraining checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is `checkpoints/checkpoint-<step>/` holding model.safetensors, optimizer.safetensors (every per-
parameter state tensor, keyed `<param index>.<name>`), optimizer.json (param groups and non-tensor state),
scheduler.json and state.json. It is written into a hidden staging folder and renamed once complete, with
state.json written last, so a run killed at any moment leaves a complete checkpoint or none. Batches depend only on
(seed, step), so no RNG state is needed to resume exactly.
"""

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "state.json"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (state.json present), oldest first."""
    root = Path(output_dir) / "checkpoints"
    found = []
    if root.is_dir():
        for path in root.iterdir():
            match = CHECKPOINT_PATTERN.match(path.name)
            if match and (path / STATE_FILE).is_file():
                found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state_dict = optimizer.state_dict()
    tensors, plain_state = {}, {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain_state.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "plain_state": plain_state}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["plain_state"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
    keep: int,
    files: dict[str, str] | None = None,
) -> Path:
    """Write checkpoint-<step> atomically and keep only the newest `keep` checkpoints."""
    root = Path(output_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(".staging-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    staging, final = root / f".staging-{step}", root / f"checkpoint-{step}"
    staging.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, staging / "model.safetensors")
    tensors, meta = _optimizer_to_files(optimizer)
    save_file(tensors, staging / "optimizer.safetensors")
    _write_json(staging / "optimizer.json", meta)
    scheduler_state = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    _write_json(staging / "scheduler.json", scheduler_state)
    for name, text in (files or {}).items():
        (staging / name).write_text(text)
    _write_json(staging / STATE_FILE, {**state, "step": step})  # last: marks the checkpoint complete
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """Restore model, optimizer and scheduler in place; return the loop state (with its `step`)."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete pretraining checkpoint (no {STATE_FILE})")
    model.load_state_dict(load_file(path / "model.safetensors"), strict=True)
    meta = json.loads((path / "optimizer.json").read_text())
    optimizer.load_state_dict(_optimizer_from_files(load_file(path / "optimizer.safetensors"), meta))
    scheduler_state = json.loads((path / "scheduler.json").read_text())
    scheduler.load_state_dict({**scheduler.state_dict(), **scheduler_state})
    return json.loads((path / STATE_FILE).read_text())
