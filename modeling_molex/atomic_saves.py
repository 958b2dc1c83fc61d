"""One save per folder, whole: how `save_pretrained` and `save_experts` replace a folder, and how loading tells
that a folder's files belong to one save.

Replacing a whole folder at once. A save is written into a hidden sibling and swapped in, so that a crash (even
kill -9) leaves either the previous folder or the new one, never a mix of both.

On Linux the swap is one `renameat2(RENAME_EXCHANGE)` call: atomic. Where that is not available (another OS, a file
system without it), the previous folder is renamed aside to `.NAME.molex-previous-*`, the new one renamed in, the
previous one removed; a crash between the two renames leaves no folder at NAME and the previous version complete
beside it, which `from_pretrained` then points to. Not protected: power loss (files are not fsync'ed).

A save replaces only a folder it recognises (absent, empty, or of the kind being saved): saving into someone's home
folder must not swap it away.

Save ids. Which files of a folder were written by one save, so that a folder mixing two saves is refused.

Every `save_pretrained` (and `save_experts`) writes one id into each file it produces that can hold one:
`molex_save_id` in config.json and in the `__metadata__` of every safetensors file (model weights, router rows, each
expert's PEFT weights), `save_id` in the pack's index.json. Loading checks that all of them agree; a folder whose
weights come from one save and config from another (an interrupted copy, a file dropped in by hand) is refused,
naming each file and its id. Folders saved before save ids existed hold none and load as before.

The id is a hash of what is saved (every tensor's name, dtype, shape and bytes, and the configuration), not a random
draw: saving the same model twice gives the same bytes, so a re-push uploads nothing that did not change, and two
saves whose files could be mixed without harm (equal content) carry the same id.
"""

import ctypes
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable

import torch

from .safe_files import FolderFiles, read_json, read_json_object, refuse_special_files, safetensors_metadata


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM}


def resolve_target(directory: str | os.PathLike) -> str:
    """Absolute path of the folder to replace; a symbolic link to a folder is followed (the folder is replaced)."""
    path = os.path.abspath(os.fspath(directory))
    return os.path.realpath(path) if os.path.islink(path) else path


def check_replaceable(target: str, is_same_kind: Callable[[str], bool], what: str) -> None:
    """Refuse to replace a folder that is neither empty nor of the kind being saved (`what`, for the error)."""
    if not os.path.lexists(target):
        return
    if not os.path.isdir(target):
        raise FileExistsError(f"{target} exists and is not a folder; {what} go into a new or empty folder")
    if os.listdir(target) and not is_same_kind(target):
        raise FileExistsError(
            f"{target} is not empty and does not hold {what}: a save replaces the whole folder, so it only saves "
            "into a new folder, an empty one or an earlier save"
        )


def make_staging(target: str, prefix: str) -> str:
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix, dir=parent)


def exchange_directories(first: str, second: str) -> bool:
    """Swap two paths in one atomic step (Linux `renameat2`); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), first, None, second)


def swap_into_place(staging: str, target: str) -> None:
    """Make the complete folder `staging` be `target`; the previous `target` ends up removed. After the call
    `staging` no longer exists (the caller may still try to remove it)."""
    if not os.path.lexists(target):
        os.rename(staging, target)
        return
    if exchange_directories(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # now the previous version
        return
    retired = tempfile.mkdtemp(prefix=previous_version_prefix(target), dir=os.path.dirname(target))
    os.rmdir(retired)
    os.rename(target, retired)
    os.rename(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def carry_over(previous: str, staging: str, owned: Callable[[str], bool]) -> list[str]:
    """Hard-link (or copy) into `staging` every top-level entry of the `previous` folder that the new save does not
    own, so that files the user keeps beside a model (results.json, README.md, figures/) survive a re-save. Returns
    their names. Nothing in `previous` changes."""
    if not os.path.isdir(previous):
        return []
    carried = []
    for name in sorted(os.listdir(previous)):
        if owned(name) or os.path.lexists(os.path.join(staging, name)):
            continue
        source, destination = os.path.join(previous, name), os.path.join(staging, name)
        if os.path.islink(source):
            os.symlink(os.readlink(source), destination)
        elif os.path.isdir(source):
            shutil.copytree(source, destination, symlinks=True, copy_function=_link_or_copy)
        elif os.path.isfile(source):
            _link_or_copy(source, destination)
        else:
            raise OSError(f"{source} is neither a file nor a folder; move it out of the folder before saving into it")
        carried.append(name)
    return carried


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, destination, follow_symlinks=False)


SAVE_ID_KEY = "molex_save_id"  # in config.json and in safetensors metadata
PACK_SAVE_ID_KEY = "save_id"  # in a pack's index.json
MODEL_JSON_FILES = ("config.json", "preprocessor_config.json", "generation_config.json")  # checked before loading


def content_save_id(tensors: dict[str, torch.Tensor], *documents: object) -> str:
    """Hash of tensors (name, dtype, shape, bytes) and JSON-able documents: the id of a save of exactly these."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    for document in documents:
        digest.update(json.dumps(document, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


def add_safetensors_metadata(path: str, extra: dict[str, str]) -> None:
    """Add `extra` to the header metadata of a safetensors file. The header is rewritten (padded to 8 bytes, as the
    format requires) and the tensor bytes copied unchanged after it: data offsets are relative to the header's end."""
    with open(path, "rb") as source:
        header_size = int.from_bytes(source.read(8), "little")
        header = json.loads(source.read(header_size))
        header["__metadata__"] = {**header.get("__metadata__", {}), **extra}
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % 8)
        rewritten = path + ".metadata"
        with open(rewritten, "wb") as target:
            target.write(len(encoded).to_bytes(8, "little"))
            target.write(encoded)
            shutil.copyfileobj(source, target, 16 * 1024 * 1024)
    os.replace(rewritten, path)


def stamp_json(path: str, key: str, value: str, nested: str | None = None) -> None:
    """Set `key` (inside the `nested` object when given) of a JSON file, keeping its indentation style."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    (data.setdefault(nested, {}) if nested else data)[key] = value
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def stamp_model_weights(folder: str, save_id: str) -> None:
    """Write `save_id` into config.json, every top-level safetensors file and the shard index of a fresh save."""
    stamp_json(os.path.join(folder, "config.json"), SAVE_ID_KEY, save_id)
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            add_safetensors_metadata(os.path.join(folder, name), {SAVE_ID_KEY: save_id})
        elif name.endswith(".safetensors.index.json"):
            stamp_json(os.path.join(folder, name), SAVE_ID_KEY, save_id, nested="metadata")


def check_same_save(ids: dict[str, str | None], folder: str) -> None:
    """Refuse when the files' save ids differ (a file without an id counts as its own kind of save)."""
    if len(set(ids.values())) <= 1:
        return
    listed = "; ".join(f"{name}: {value or 'no save id'}" for name, value in ids.items())
    raise ValueError(
        f"{folder}: its files come from different saves ({listed}). A save into it was interrupted or files were "
        "copied in from another save; save the model again (or restore the folder) before loading it"
    )


def pack_save_ids(files: FolderFiles, index: dict, expert_names: Iterable[str]) -> dict[str, str | None]:
    """file -> save id for the files of a pack whose index is already read."""
    ids = {"index.json": index.get(PACK_SAVE_ID_KEY)}
    ids["router.safetensors"] = safetensors_metadata(files.file("router.safetensors")).get(SAVE_ID_KEY)
    for name in expert_names:
        relative = f"{name}/adapter_model.safetensors"
        ids[relative] = safetensors_metadata(files.file(relative)).get(SAVE_ID_KEY)
    return ids


def check_model_folder(folder: str | os.PathLike | None, config=None) -> None:
    """After `from_pretrained` of a local folder: refuse one whose config, weights and experts come from different
    saves. Hub ids pass through (a Hub commit is whole). The id is then dropped from the loaded `config`: it names
    the folder's files, not the model, which may change before its next save."""
    if config is not None and hasattr(config, SAVE_ID_KEY):
        delattr(config, SAVE_ID_KEY)
    if not folder or not os.path.isdir(os.fspath(folder)):
        return
    folder = os.fspath(folder)
    files = FolderFiles(folder)
    if not os.path.lexists(os.path.join(folder, "config.json")):
        return  # not a saved model: transformers says so
    ids = {"config.json": read_json_object(files.file("config.json")).get(SAVE_ID_KEY)}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            ids[name] = safetensors_metadata(files.file(name)).get(SAVE_ID_KEY)
        elif name.endswith(".safetensors.index.json"):
            ids[name] = (read_json_object(files.file(name)).get("metadata") or {}).get(SAVE_ID_KEY)
    if os.path.lexists(os.path.join(folder, "experts", "index.json")):
        index = read_json_object(files.file("experts/index.json"))
        names = [entry.get("name") for entry in index.get("experts", []) if isinstance(entry, dict)]
        pack = pack_save_ids(FolderFiles(os.path.join(folder, "experts")), index, [n for n in names if n])
        ids.update({f"experts/{name}": value for name, value in pack.items()})
    check_same_save(ids, folder)


def previous_version_prefix(target: str) -> str:
    """Name prefix of the folder that holds the previous version of `target` while a save replaces it."""
    return f".{os.path.basename(os.path.normpath(target))}.molex-previous-"


def check_before_load(folder: str | os.PathLike | None) -> None:
    """Before transformers opens a local folder: refuse a FIFO or device in it (opening one would hang or stream
    without end; links to regular files are the user's own and stay allowed) and, where the folder is missing
    because a save into it was interrupted between moving the previous version aside and moving the new one in
    (only where folders cannot be exchanged atomically), say where that version is."""
    if not folder or not isinstance(folder, str | os.PathLike):
        return
    if os.path.isdir(os.fspath(folder)):
        refuse_special_files(os.fspath(folder))
        for name in sorted(os.listdir(folder)):  # bounded JSON: transformers' own parse ends in a RecursionError
            if name in MODEL_JSON_FILES or name.endswith(".safetensors.index.json"):
                read_json(os.path.join(folder, name))
        return
    if os.path.lexists(os.fspath(folder)):
        return
    folder = os.fspath(folder)
    parent = os.path.dirname(os.path.abspath(folder)) or "."
    prefix = previous_version_prefix(folder)
    if not os.path.isdir(parent):
        return
    previous = sorted(name for name in os.listdir(parent) if name.startswith(prefix))
    if previous:
        raise FileNotFoundError(
            f"{folder} is missing: a save into it was interrupted after moving the previous version aside; that "
            f"version is complete in {os.path.join(parent, previous[-1])}: rename it back to {folder}"
        )
