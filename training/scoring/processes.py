"""The process(es) of one `molex-score` run: which device, which rank of how many, and how they agree.

Started alone, `molex-score` is one process and imports no distributed machinery. Started by a launcher
(`accelerate launch`, `torchrun`, `mpirun`: WORLD_SIZE or its MPI equivalents > 1), it joins the process group through
`accelerate.PartialState`: on CPU with `cpu=True` (gloo), else one GPU per process. If the group that forms is smaller
than the launcher said (a CPU run without `cpu=True` silently gives N independent processes), the run stops instead of
scoring every file N times. Processes exchange only small tensors at start-up (do all agree to go on? do all see the
same file list?); progress and completion go through small JSON files beside the output (`progress-R-of-N.json`),
so no collective call waits with a timeout while the slowest process finishes its shard.
"""

import contextlib
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from training.scoring import ScoringError


WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def resolve_device(text: str) -> torch.device:
    """`--device` -> torch.device; "auto" is CUDA when there is a GPU, else the CPU. ValueError naming the option for
    a device that is not a device or is not there (e.g. cuda:0 without CUDA)."""
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {text}: not a torch device (e.g. auto, cpu, cuda, cuda:1)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            reason = "this torch has no CUDA support" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"--device {text}: CUDA is not available here ({reason}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {text}: MPS is not available here; use --device cpu")
    return device


def launched_world_size() -> int:
    for name in WORLD_SIZE_VARIABLES:
        if os.environ.get(name, "").strip().isdigit():
            return int(os.environ[name])
    return 1


@dataclass
class ScoringProcesses:
    """This process's rank among `world` processes and its device; `state` is accelerate's, when launched."""

    rank: int
    world: int
    device: torch.device
    state: object | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, device: torch.device) -> "ScoringProcesses":
        expected = launched_world_size()
        if expected <= 1:
            return cls(0, 1, device)
        from accelerate import PartialState

        state = PartialState(cpu=device.type == "cpu")
        if state.num_processes != expected:
            raise ScoringError(
                f"the launcher started {expected} processes but they formed a group of {state.num_processes}: every "
                "file would be scored by each of them. On CPU launch with `accelerate launch --multi_gpu "
                "--num_processes N` or `torchrun --nproc_per_node N` (`--cpu` starts one process)"
            )
        if device.type == "cuda" and device.index is None:
            device = state.device  # one GPU per process: cuda:LOCAL_RANK
        return cls(state.process_index, state.num_processes, device, state)

    def all_agree(self, ok: bool) -> bool:
        """True when every process passes ok=True (a collective call: every process must make it)."""
        if self.world == 1:
            return ok
        flag = torch.tensor([int(ok)], device=self.state.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())

    def same_everywhere(self, text: str) -> bool:
        """True when every process passes the same `text` (compared by a 63-bit hash; collective)."""
        if self.world == 1:
            return True
        value = int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()[:8], "big") >> 1
        low = torch.tensor([value], dtype=torch.int64, device=self.state.device)
        high = low.clone()
        torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
        torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
        return bool(low.item() == high.item())

    def main_process_first(self):
        """A context in which the main process runs first (e.g. copying remote code into the module cache)."""
        return contextlib.nullcontext() if self.world == 1 else self.state.main_process_first()


def write_progress(path: Path, **fields) -> None:
    """Replace the progress file at `path` atomically (readers never see half of it)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), **fields}), encoding="utf-8")
    os.replace(temporary, path)


def read_progress(path: Path) -> dict | None:
    """The fields of a progress file, or None when it is not there (yet)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def process_alive(progress: dict) -> bool:
    """Whether the process that wrote `progress` still runs; True when that cannot be known (another machine)."""
    if progress.get("host") != socket.gethostname() or not isinstance(progress.get("pid"), int):
        return True
    try:
        os.kill(progress["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
