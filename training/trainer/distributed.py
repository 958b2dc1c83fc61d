"""Move JSON values and tensors between ranks without pickle, so that no rank needs another node's disk.

Only the main process reads and writes checkpoints; at resume and at the end of training it broadcasts what it read
to every rank, and at save time it gathers every rank's RNG state. Values travel as tensors (JSON as UTF-8 bytes),
never as pickled objects. With one process every helper returns its input unchanged.
"""

import json
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, gather


def _json_bytes(value: Any, accelerator: Accelerator) -> torch.Tensor:
    data = json.dumps(value).encode("utf-8")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(accelerator.device)


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
    return json.loads(bytes(data.cpu().tolist()).decode("utf-8"))


def gather_json(value: Any, accelerator: Accelerator) -> list[Any]:
    """Every rank's JSON-serialisable `value`, in rank order, on every rank."""
    if accelerator.num_processes == 1:
        return [value]
    data = _json_bytes(value, accelerator)
    lengths = gather(torch.tensor([data.numel()], dtype=torch.int64, device=accelerator.device)).cpu().tolist()
    padded = torch.zeros(max(lengths), dtype=torch.uint8, device=accelerator.device)
    padded[: data.numel()] = data
    rows = gather(padded).cpu().view(len(lengths), -1)
    return [json.loads(bytes(row[:n].tolist()).decode("utf-8")) for row, n in zip(rows, lengths, strict=True)]


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
