"""Atomic, pickle-free training checkpoints, named and pruned by accelerate's `ProjectConfiguration`.

`accelerator.save_state` writes pickles (`optimizer.bin`, `scheduler.bin`, `random_states_<i>.pkl`, registered
objects as `custom_checkpoint_<i>.pkl`) and `load_state` unpickles them, so a planted file runs code on resume. A
MoLEx checkpoint holds only safetensors and JSON, written and read here:

    checkpoints/checkpoint_<i>/         (accelerate's automatic naming: i counts the saves of the run)
        trainable.safetensors           trainable parameters (experts, routers, back-end); the backbone is frozen
        best_trainable.safetensors      the best dev evaluation's trainable parameters so far
        optimizer.safetensors + .json   optimizer tensors (AdamW moments, steps) and everything else (param groups)
        scheduler.json                  LR scheduler state
        rng_states.json                 python / numpy / torch RNG states of every rank
        grad_scaler.json                fp16 loss-scaler state (mixed_precision=fp16 only)
        train_config.json               the run's resolved TrainConfig
        training_state.json             the loop's TrainState; written last, so it marks a complete checkpoint

Only the main process touches the disk; ranks exchange what they need as tensors (trainer/distributed.py), so
nodes need no shared filesystem. A checkpoint is written into a hidden staging folder and renamed once complete:
a run killed at any moment leaves a complete checkpoint or none. Resuming refuses a checkpoint holding any other
kind of file (a planted `.pkl`/`.bin` is never opened).
"""

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from training.trainer.distributed import broadcast_json, broadcast_tensors, gather_json


CHECKPOINT_PATTERN = re.compile(r"^checkpoint_(\d+)$")
STATE_FILE = "training_state.json"
TRAINABLE_FILE = "trainable.safetensors"
BEST_FILE = "best_trainable.safetensors"
OPTIMIZER_TENSORS, OPTIMIZER_JSON = "optimizer.safetensors", "optimizer.json"
SCHEDULER_FILE, RNG_FILE, SCALER_FILE = "scheduler.json", "rng_states.json", "grad_scaler.json"
SAFE_SUFFIXES = (".json", ".safetensors")


def checkpoints_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def next_iteration(output_dir: str | Path) -> int:
    """The number of the next checkpoint: after every checkpoint already there (so that a fresh run in a used
    `output_dir` prunes the old run's checkpoints as older, and `latest` is always this run's)."""
    numbers = [int(CHECKPOINT_PATTERN.match(p.name).group(1)) for p in list_checkpoints(output_dir)]
    return max(numbers, default=-1) + 1


def resolve_resume_path(output_dir: str | Path, value: str | None) -> Path | None:
    """`None` -> fresh start; `'latest'` -> newest complete checkpoint (or fresh start if none); else that folder."""
    if value is None:
        return None
    if value == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(value)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"`resume_from_checkpoint` {path} is not a complete checkpoint (no {STATE_FILE})")
    return path


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable parameters (the unwrapped model's names)."""
    return {n: p.detach().cpu().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy `tensors` into the model's trainable parameters; every one must be there, nothing else."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(trainable - set(tensors)), sorted(set(tensors) - trainable)
    if missing or unexpected:
        raise RuntimeError(f"{source} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(tensors, strict=False)


# ----- state <-> JSON / safetensors -----
def _rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _optimizer_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into tensors (`<param index>.<key>`) and a JSON part."""
    state_dict = optimizer.state_dict()
    tensors, other = {}, {}
    for index, entry in state_dict["state"].items():
        other[str(index)] = {}
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                other[str(index)][key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state": other}


def _optimizer_state_dict(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> dict[str, Any]:
    state = {int(index): dict(values) for index, values in meta["state"].items()}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state[int(index)][key] = tensor
    groups = []
    for saved, current in zip(meta["param_groups"], optimizer.param_groups, strict=True):
        # JSON has no tuples: give back the types the optimizer uses (AdamW's `betas`)
        groups.append({k: tuple(v) if isinstance(current.get(k), tuple) else v for k, v in saved.items()})
    return {"state": state, "param_groups": groups}


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, allow_nan=True)
        handle.flush()
        os.fsync(handle.fileno())


# ----- save / load -----
def save_checkpoint(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    best: dict[str, torch.Tensor] | None,
    files: dict[str, str],
) -> Path:
    """Write `checkpoint_<iteration>` atomically (main process), prune to `total_limit`; call on every rank."""
    project = accelerator.project_configuration
    rng_states = gather_json(_rng_state(), accelerator)
    root = checkpoints_root(project.project_dir)
    final = root / f"checkpoint_{project.iteration}"
    if accelerator.is_main_process:
        staging = root / f".staging-{final.name}"
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        staging.mkdir()
        save_file(trainable_state(accelerator.unwrap_model(model)), str(staging / TRAINABLE_FILE))
        if best is not None:
            save_file(best, str(staging / BEST_FILE))
        optimizer_tensors, optimizer_meta = _optimizer_files(optimizer)
        save_file(optimizer_tensors, str(staging / OPTIMIZER_TENSORS))
        _write_json(staging / OPTIMIZER_JSON, optimizer_meta)
        _write_json(staging / SCHEDULER_FILE, scheduler.state_dict())
        _write_json(staging / RNG_FILE, rng_states)
        if accelerator.scaler is not None:
            _write_json(staging / SCALER_FILE, accelerator.scaler.state_dict())
        for name, text in files.items():
            (staging / name).write_text(text, encoding="utf-8")
        _write_json(staging / STATE_FILE, state)  # written last: its presence marks a complete checkpoint
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        if project.total_limit is not None:
            for old in list_checkpoints(project.project_dir)[: -project.total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    project.iteration += 1
    accelerator.wait_for_everyone()
    return final


def refuse_unsafe_files(path: Path) -> None:
    """A checkpoint holds only JSON and safetensors; anything else (a planted pickle) stops the resume unread."""
    unsafe = sorted(p.name for p in path.rglob("*") if p.is_file() and p.suffix not in SAFE_SUFFIXES)
    if unsafe:
        raise ValueError(
            f"Checkpoint {path} holds {unsafe}: MoLEx checkpoints contain only JSON and safetensors files, and "
            "nothing else is ever loaded (a pickle could run code). Remove them or resume from another checkpoint."
        )


def load_checkpoint(
    accelerator: Accelerator,
    path: Path | None,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Restore a checkpoint that the main process reads (`path` matters on the main process only); returns the
    loop's state and the best trainable parameters so far (None if the checkpoint has none)."""
    meta = tensors = None
    if accelerator.is_main_process:
        refuse_unsafe_files(path)
        read = {name: json.loads((path / name).read_text(encoding="utf-8")) for name in (STATE_FILE, RNG_FILE)}
        read |= {
            name: json.loads((path / name).read_text(encoding="utf-8")) for name in (OPTIMIZER_JSON, SCHEDULER_FILE)
        }
        read[SCALER_FILE] = json.loads((path / SCALER_FILE).read_text()) if (path / SCALER_FILE).is_file() else None
        read["has_best"] = (path / BEST_FILE).is_file()
        meta = read
        tensors = {f"model/{k}": v for k, v in load_file(str(path / TRAINABLE_FILE)).items()}
        tensors |= {f"optimizer/{k}": v for k, v in load_file(str(path / OPTIMIZER_TENSORS)).items()}
        if read["has_best"]:
            tensors |= {f"best/{k}": v for k, v in load_file(str(path / BEST_FILE)).items()}
    meta = broadcast_json(meta, accelerator)
    tensors = broadcast_tensors(tensors, accelerator)
    parts: dict[str, dict[str, torch.Tensor]] = {"model": {}, "optimizer": {}, "best": {}}
    for name, tensor in tensors.items():
        group, key = name.split("/", 1)
        parts[group][key] = tensor
    load_trainable_state(accelerator.unwrap_model(model), parts["model"], f"checkpoint {path}")
    optimizer.load_state_dict(_optimizer_state_dict(optimizer, parts["optimizer"], meta[OPTIMIZER_JSON]))
    scheduler.load_state_dict(meta[SCHEDULER_FILE])
    if meta[SCALER_FILE] is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(meta[SCALER_FILE])
    rng_states = meta[RNG_FILE]
    if len(rng_states) == accelerator.num_processes:  # a run resumed on another world size keeps fresh RNGs
        _set_rng_state(rng_states[accelerator.process_index])
    return meta[STATE_FILE], (parts["best"] if meta["has_best"] else None)
