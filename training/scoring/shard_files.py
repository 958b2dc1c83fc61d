"""The files around one `molex-score` output, for runs on one or many processes.

For `--output scores.tsv` on N processes, process R (0-based) scores every N-th file from the R-th of the input list
(`split_files`) into `scores.tsv.shard-R-of-N`, lists its unreadable files in `scores.tsv.errors.tsv.shard-R-of-N`
and reports its progress in `scores.tsv.progress-R-of-N.json`. When all are done, the main process merges the shards
(and what an earlier run left in `scores.tsv` and in shards of any process count) into `scores.tsv`, one row per
file in input order, written to a temporary file and renamed, then deletes the shards. `scores.tsv.lock` holds an
exclusive lock (flock) for the whole run, so a second run on the same output is refused instead of interleaving.
"""

import errno
import fcntl
import os
import re
from collections.abc import Sequence
from pathlib import Path

from training.scoring import ScoringError
from training.scoring.table_format import iter_rows


def shard_path(output: Path, rank: int, world: int) -> Path:
    return output.with_name(f"{output.name}.shard-{rank}-of-{world}")


def errors_path(output: Path) -> Path:
    return output.with_name(f"{output.name}.errors.tsv")


def progress_path(output: Path, rank: int, world: int) -> Path:
    return output.with_name(f"{output.name}.progress-{rank}-of-{world}.json")


def _companions(base: Path, pattern: str) -> list[Path]:
    """Files beside `base` named `base.name` + pattern (with rank and world groups, rank < world), sorted."""
    matcher = re.compile(re.escape(base.name) + pattern)
    try:
        names = os.listdir(base.parent if str(base.parent) else ".")
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        match = matcher.fullmatch(name)
        if match and int(match.group(1)) < int(match.group(2)):
            found.append((int(match.group(2)), int(match.group(1)), base.with_name(name)))
    return [path for _, _, path in sorted(found)]


def existing_shards(output: Path) -> list[Path]:
    """Row shards of `output` left by runs of any process count, ordered by (count, rank)."""
    return _companions(output, r"\.shard-(\d+)-of-(\d+)")


def existing_error_shards(output: Path) -> list[Path]:
    return _companions(errors_path(output), r"\.shard-(\d+)-of-(\d+)")


def existing_progress_files(output: Path) -> list[Path]:
    return _companions(output, r"\.progress-(\d+)-of-(\d+)\.json")


def stale_temporaries(output: Path) -> list[Path]:
    """Temporary files (`.<name>.<pid>.tmp`, `.<name>.progress-R-of-N.json.tmp`) a killed process left beside it."""
    try:
        names = os.listdir(output.parent if str(output.parent) else ".")
    except FileNotFoundError:
        return []
    pattern = re.compile(r"\." + re.escape(output.name) + r"\..+\.tmp")
    return [output.with_name(name) for name in sorted(names) if pattern.fullmatch(name)]


def split_files(files: Sequence[Path], rank: int, world: int) -> list[Path]:
    """Process `rank`'s share of `files`: every `world`-th file from the `rank`-th (long files that sit together in
    a folder spread over the processes). Every process computes the same input list, so the shares partition it."""
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    return list(files[rank::world])


def write_atomically(path: Path, lines) -> None:
    """Write `lines` to a temporary file beside `path`, flush it to disk and rename it over `path`."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8", newline="") as handle:
            handle.writelines(lines)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def merge_tables(output: Path, columns: Sequence[str], order: Sequence[str],
                 sources: Sequence[Path] | None = None) -> int:  # fmt: skip
    """Merge `output` (when it exists) and `sources` (default: every row shard of `output`) into `output`: the rows
    of the keys in `order` in that order, then rows whose keys `order` lacks (kept from earlier runs), each key once
    (the first row seen). Returns the row count. The sources are deleted only after `output` is in place; a source
    in another format raises ValueError naming it, before anything changes."""
    sources = existing_shards(output) if sources is None else list(sources)
    rows: dict[str, str] = {}
    for source in ([output] if output.exists() else []) + sources:
        for key, line in iter_rows(source, columns):
            rows.setdefault(key, line)
    ordered = [key for key in dict.fromkeys(order) if key in rows]
    listed = set(ordered)
    ordered += [key for key in rows if key not in listed]
    write_atomically(output, ["\t".join(columns) + "\n", *(rows[key] for key in ordered)])
    for source in sources:
        source.unlink(missing_ok=True)
    return len(ordered)


class OutputBusyError(ScoringError):
    """Another molex-score run holds the output's lock."""


class OutputLock:
    """An exclusive, non-blocking flock on `<output>.lock`, held until `release` (or the process ends, even by
    kill -9: the kernel drops it). The lock file stays; it holds the pid of the last run that took it."""

    def __init__(self, output: Path):
        self.output = output
        self.path = output.with_name(f"{output.name}.lock")
        self._descriptor: int | None = None

    def acquire(self) -> "OutputLock":
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "?"
            os.close(descriptor)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputBusyError(
                    f"another molex-score run (pid {holder}) is writing {self.output}; wait for it to end or choose "
                    "another --output"
                ) from None
            raise
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        self._descriptor = descriptor
        return self

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the last descriptor drops the flock
            self._descriptor = None
