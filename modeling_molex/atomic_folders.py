"""Replacing a whole folder at once: a save is written into a hidden sibling and swapped in, so that a crash (even
kill -9) leaves either the previous folder or the new one, never a mix of both.

On Linux the swap is one `renameat2(RENAME_EXCHANGE)` call: atomic. Where that is not available (another OS, a file
system without it), the previous folder is renamed aside to `.NAME.molex-previous-*`, the new one renamed in, the
previous one removed; a crash between the two renames leaves no folder at NAME and the previous version complete
beside it, which `from_pretrained` then points to. Not protected: power loss (files are not fsync'ed).

A save replaces only a folder it recognises (absent, empty, or of the kind being saved): saving into someone's home
folder must not swap it away.
"""

import ctypes
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Callable

from .save_identity import previous_version_prefix


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
