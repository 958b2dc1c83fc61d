"""Atomic training checkpoints on top of `accelerator.save_state`.

A checkpoint is written into a hidden staging folder and renamed to `checkpoints/checkpoint-<step>` only once every
rank has finished writing, so a run killed at any moment (kill -9 included) leaves either a complete checkpoint or
none: resuming never sees a half-written one. Staging leftovers from a killed run are removed on the next save.
"""

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator


CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "training_state.json"


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


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    step: int,
    state: dict[str, Any],
    keep: int,
    files: dict[str, str],
    copies: dict[str, Path] | None = None,
) -> Path:
    """Save model/optimizer/scheduler/RNG state (all ranks), `state`, extra text `files` and copies of existing
    files (`copies`: name in the checkpoint -> source path), atomically."""
    root = checkpoints_root(output_dir)
    staging = root / f".staging-checkpoint-{step}"
    final = root / f"checkpoint-{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(".staging-checkpoint-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        staging.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name, text in files.items():
            (staging / name).write_text(text)
        for name, source in (copies or {}).items():
            if Path(source).is_file():
                shutil.copy2(source, staging / name)
        _write_json(staging / STATE_FILE, state)  # written last: its presence marks a complete checkpoint
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict[str, Any]:
    accelerator.load_state(str(path))
    with open(path / STATE_FILE, encoding="utf-8") as handle:
        return json.load(handle)
