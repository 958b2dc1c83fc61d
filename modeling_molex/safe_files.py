"""Opening the files of a model folder or expert pack safely: regular files inside the folder only, bounded JSON,
finite tensors. Shipped as remote code (stdlib, numpy, torch, safetensors only).

- Only regular files are opened, checked with `os.lstat` / `os.stat` *before* opening: a FIFO would block `open`
  forever and a device would stream without end.
- No symbolic links: a link can point out of the folder (a weights file that is really someone's token, or another
  pack) or to another expert of the same pack. The one exception is the Hugging Face cache, whose snapshot folders
  hold every file as a link into the repo's own `blobs/` folder; there a file link must end in that `blobs/` folder.
- JSON is read at most `MAX_JSON_BYTES` long and `MAX_JSON_DEPTH` deep: a deeply nested file would otherwise end in a
  RecursionError that names nothing.
- Tensors must be finite: one NaN in a router row or LoRA matrix makes every score NaN, and a NaN score reads as
  "spoof".
"""

import json
import os
import re
import stat

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file


MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}


class UnsafeFileError(ValueError):
    """A file of a model folder or pack that is not opened: not a regular file, a link, or out of bounds."""


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def hub_blobs_folder(root: str) -> str | None:
    """The `blobs/` folder of the Hugging Face cache repo whose snapshot holds `root`, or None for a plain folder."""
    path = os.path.abspath(root)
    while True:
        parent = os.path.dirname(path)
        if parent == path:
            return None
        if os.path.basename(parent) == "snapshots":
            blobs = os.path.join(os.path.dirname(parent), "blobs")
            return os.path.realpath(blobs) if os.path.isdir(blobs) else None
        path = parent


class FolderFiles:
    """The files of one folder (a pack, a model), each checked before it is opened.

    `file("expert_0/adapter_model.safetensors")` returns the path to open, or raises UnsafeFileError naming it: every
    component must be a plain name, every folder a real folder, the file a regular file (in a Hub cache snapshot, a
    link into the repo's `blobs/`)."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.path.abspath(os.fspath(root))
        self.blobs = hub_blobs_folder(self.root)

    def file(self, relative: str) -> str:
        parts = relative.split("/")
        if any(part in ("", ".", "..") or "\\" in part for part in parts):
            raise UnsafeFileError(f"{os.path.join(self.root, relative)}: not a plain path inside {self.root}")
        path = self.root
        for index, part in enumerate(parts):
            path = os.path.join(path, part)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                raise FileNotFoundError(f"{path}: no such file") from None
            last = index == len(parts) - 1
            if stat.S_ISLNK(info.st_mode):
                if not (last and self._is_cache_blob(path)):
                    raise UnsafeFileError(
                        f"{path} is a symbolic link (to {os.readlink(path)!r}); only regular files inside "
                        f"{self.root} are opened"
                    )
                info = os.stat(path)
            if not last and not stat.S_ISDIR(info.st_mode):
                raise UnsafeFileError(f"{path} is {_kind(info.st_mode)}, expected a folder")
            if last and not stat.S_ISREG(info.st_mode):
                raise UnsafeFileError(f"{path} is {_kind(info.st_mode)}, not a regular file; it is not opened")
        return path

    def identity(self, path: str) -> tuple[int, int]:
        """(device, inode) of a checked file: two names of one file (a hard link, or a shared cache blob)."""
        info = os.stat(path)
        return info.st_dev, info.st_ino

    @property
    def is_hub_cache(self) -> bool:
        return self.blobs is not None

    def _is_cache_blob(self, path: str) -> bool:
        return self.blobs is not None and os.path.dirname(os.path.realpath(path)) == self.blobs


def refuse_special_files(folder: str) -> None:
    """Raise UnsafeFileError for the first top-level entry of `folder` that is (or links to) neither a regular file
    nor a folder: a FIFO, a device or a socket."""
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            continue  # a dangling link: opening it fails with a clear error anyway
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise UnsafeFileError(f"{path} is {_kind(mode)}, not a regular file; it is not opened")


def check_json_depth(data: bytes, path: str, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON nested deeper than `limit` (brackets inside strings do not count)."""
    outside_strings = np.frombuffer(_JSON_STRING.sub(b'""', data), dtype=np.uint8)
    steps = np.zeros(outside_strings.shape, dtype=np.int64)
    steps[(outside_strings == ord("[")) | (outside_strings == ord("{"))] = 1
    steps[(outside_strings == ord("]")) | (outside_strings == ord("}"))] = -1
    depth = int(np.cumsum(steps).max(initial=0))
    if depth > limit:
        raise ValueError(f"{path}: JSON nested {depth} levels deep, more than the {limit} a MoLEx file may use")


def read_json(path: str) -> object:
    """Parse a JSON file already checked to be regular (see `FolderFiles.file`), bounded in size and depth; every
    problem is a ValueError naming the file."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFileError(f"{path} is {_kind(info.st_mode)}, not a regular file; it is not opened")
    size = info.st_size
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{path}: {size} bytes, more than the {MAX_JSON_BYTES} a MoLEx JSON file may hold")
    with open(path, "rb") as handle:
        data = handle.read(MAX_JSON_BYTES + 1)
    check_json_depth(data, path)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error


def read_json_object(path: str) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def safetensors_metadata(path: str) -> dict[str, str]:
    """The `__metadata__` of a safetensors file (its header only is read)."""
    with safe_open(path, framework="pt") as handle:
        return dict(handle.metadata() or {})


def load_finite_tensors(path: str) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a NaN or infinite value anywhere raises ValueError naming file and tensor."""
    try:
        tensors = load_file(path)
    except Exception as error:  # safetensors raises its own SafetensorError for a malformed file
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from error
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            count = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"{path}: tensor {name!r} holds {count} non-finite value(s) (NaN or infinity); refused, since they "
                "would make every score NaN"
            )
    return tensors
