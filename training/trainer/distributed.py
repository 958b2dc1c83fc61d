"""Move JSON values and tensors between ranks without pickle, so that no rank needs another node's disk.

Only the main process reads and writes checkpoints; at resume and at the end of training it broadcasts what it read
to every rank, and at save time it gathers every rank's RNG state. Values travel as tensors (JSON as UTF-8 bytes),
never as pickled objects. With one process every helper returns its input unchanged.
"""

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, gather


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


def _json_bytes(value: Any, accelerator: Accelerator) -> torch.Tensor:
    return _bytes_tensor(json.dumps(value).encode("utf-8")).to(accelerator.device)


def broadcast_json(value: Any, accelerator: Accelerator) -> Any:
    """The main process's JSON-serialisable `value`, on every rank (the other ranks' argument is ignored)."""
    if accelerator.num_processes == 1:
        return value
    data = _json_bytes(value, accelerator) if accelerator.is_main_process else None
    length = torch.tensor([0 if data is None else data.numel()], dtype=torch.int64, device=accelerator.device)
    length = broadcast(length, from_process=0)
    if data is None:
        data = torch.empty(int(length.item()), dtype=torch.uint8, device=accelerator.device)
    data = broadcast(data, from_process=0)
    return json.loads(data.cpu().numpy().tobytes().decode("utf-8"))


def gather_json(value: Any, accelerator: Accelerator) -> list[Any]:
    """Every rank's JSON-serialisable `value`, in rank order, on every rank."""
    if accelerator.num_processes == 1:
        return [value]
    data = _json_bytes(value, accelerator)
    lengths = gather(torch.tensor([data.numel()], dtype=torch.int64, device=accelerator.device)).cpu().tolist()
    padded = torch.zeros(max(lengths), dtype=torch.uint8, device=accelerator.device)
    padded[: data.numel()] = data
    rows = gather(padded).cpu().view(len(lengths), -1)
    return [json.loads(row[:n].numpy().tobytes().decode("utf-8")) for row, n in zip(rows, lengths, strict=True)]


def broadcast_tensors(tensors: dict[str, torch.Tensor] | None, accelerator: Accelerator) -> dict[str, torch.Tensor]:
    """The main process's `tensors` (CPU copies), on every rank: names, shapes and dtypes travel as JSON first."""
    if accelerator.num_processes == 1:
        return dict(tensors or {})
    manifest = None
    if accelerator.is_main_process:
        manifest = [[name, list(t.shape), str(t.dtype).removeprefix("torch.")] for name, t in tensors.items()]
    manifest = broadcast_json(manifest, accelerator)
    result = {}
    for name, shape, dtype in manifest:
        if accelerator.is_main_process:
            tensor = tensors[name].to(accelerator.device).contiguous()
        else:
            tensor = torch.empty(shape, dtype=getattr(torch, dtype), device=accelerator.device)
        result[name] = broadcast(tensor, from_process=0).cpu()
    return result


def share_folder(folder: str | Path, accelerator: Accelerator) -> None:
    """Give every node the main process's `folder` (small generated files, e.g. the tiny random backbone), when
    nodes do not share a disk. A node that already has the folder (a shared disk) keeps it; the others get a
    staged copy renamed into place. transformers' `save_pretrained` writes on global rank 0 only, so files that
    every node reads must be built on the main process and shared this way."""
    if accelerator.num_processes == 1:
        return
    folder = Path(folder)
    files = None
    if accelerator.is_main_process:
        files = {
            path.relative_to(folder).as_posix(): _bytes_tensor(path.read_bytes())
            for path in sorted(folder.rglob("*"))
            if path.is_file()
        }
    files = broadcast_tensors(files, accelerator)
    if accelerator.is_local_main_process and not accelerator.is_main_process and not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        for name, data in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data.numpy().tobytes())
        os.replace(staging, folder)
    accelerator.wait_for_everyone()
