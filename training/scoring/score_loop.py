"""Score one process's files into its table, batching WINDOWS across files.

Files are decoded one at a time by the model package's bounded decoder (`modeling_molex.audio_decoding`, the one
the demo and `score_file` use: the length read from the container and refused over `--max_seconds` before decoding,
the samples decoded under a hard cap) and gathered into a group until the group holds
`batch_size` windows; the group then goes to `model.score_waveforms` (the one inference path), which runs the forward
passes `batch_size` windows at a time. So short files share forward passes as before, while a long file closes its
group on its own: memory holds one batch of short files or one file, never `batch_size` long files. Rows are written
and flushed group by group; unreadable files are kept with their reason, never stop the run.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modeling_molex.audio_io import decode_audio
from modeling_molex.scoring import window_starts
from training.scoring import ScoringError
from training.scoring.table_format import (
    format_line,
    official_fields,
    official_name_problem,
    open_table_for_append,
    tsv_fields,
)


def window_count(num_samples: int, rate: int, config) -> int:
    """How many windows `score_waveforms` scores a clip of `num_samples` at `rate` Hz in (default hop)."""
    model_rate, crop = int(config.sampling_rate), int(config.crop_samples)
    at_model_rate = math.ceil(num_samples * model_rate / rate) if rate > 0 else num_samples
    return len(window_starts(at_model_rate, crop, max(1, crop // 2)))


class TableWriteError(ScoringError):
    """The output (or a shard) cannot be written: a full disk, a read-only folder. The rows already written stay."""

    def __init__(self, path: Path, error: OSError):
        reason = error.strerror or str(error)
        super().__init__(f"cannot write {path}: {reason} (errno {error.errno}); the rows written before are kept: "
                         "fix it (free space, permissions) and rerun with --resume")  # fmt: skip


class RowWriter:
    """Appends the rows of scored files to one table, a group at a time."""

    def __init__(self, path: Path, official: bool, top_k: int):
        self.path, self.official, self.top_k = path, official, top_k
        self._pending: list[str] = []
        try:
            self._handle = open_table_for_append(path)
        except OSError as error:
            raise TableWriteError(path, error) from None

    def add(self, path: Path, result) -> bool:
        """Queue the row of `path`; False when the format has no row for it (a near-silent file in --official)."""
        if self.official and result.silent:
            return False
        fields = official_fields(path, result) if self.official else tsv_fields(path, result, self.top_k)
        self._pending.append(format_line(fields))
        return True

    def flush(self) -> None:
        try:
            self._handle.write("".join(self._pending))
            self._handle.flush()
        except OSError as error:
            raise TableWriteError(self.path, error) from None
        self._pending.clear()

    def close(self) -> None:
        try:
            self._handle.close()
        except OSError:
            pass  # already reported by the flush that failed


@dataclass
class ShardCounts:
    processed: int = 0  # files handled this run: scored, left out (near-silent in --official) or unreadable
    scored: int = 0  # files with a row (near-silent TSV rows included)
    silent: int = 0
    errors: list[tuple[Path, str]] = field(default_factory=list)


def _score_group(model, group, batch_size: int, errors: list) -> list[tuple[Path, object]]:
    """Score a group together; if one clip is refused (e.g. NaN samples) or memory runs out, score the clips one by
    one, so that only the clip at fault goes to the errors, named (MemoryError never ends the run)."""
    paths, waves, rates = zip(*group, strict=True)
    names = [path.name for path in paths]
    try:
        return list(zip(paths, model.score_waveforms(list(waves), list(rates), names=names, batch_size=batch_size),
                        strict=True))  # fmt: skip
    except (ValueError, MemoryError):
        scored = []
        for path, wave, rate in group:
            try:
                [result] = model.score_waveforms([wave], [rate], names=[path.name], batch_size=batch_size)
                scored.append((path, result))
            except ValueError as error:
                errors.append((path, str(error)))
            except MemoryError:
                seconds = wave.shape[-1] / rate
                errors.append((path, f"{path.name}: scoring it needs more memory than is free ({seconds:.1f} s at "
                                     f"{rate} Hz; lower --max_seconds or --batch_size)"))  # fmt: skip
        return scored


def score_shard(
    files: list[Path],
    model,
    writer: RowWriter,
    *,
    batch_size: int,
    max_seconds: float | None,
    progress: Callable[[ShardCounts], None] = lambda counts: None,
) -> ShardCounts:
    """Score `files` into `writer`, calling `progress(counts)` after each group and each unreadable file."""
    counts = ShardCounts()
    group: list[tuple[Path, object, int]] = []
    windows = 0

    def score_group() -> None:
        for path, result in _score_group(model, group, batch_size, counts.errors):
            if writer.add(path, result):
                counts.scored += 1
            counts.silent += bool(result.silent)
        writer.flush()
        counts.processed += len(group)
        progress(counts)

    for path in files:
        problem = official_name_problem(path.stem) if writer.official else None
        try:
            if problem:
                raise ValueError(problem)
            wave, rate = decode_audio(path, max_seconds=max_seconds)
        except (ValueError, OSError) as error:
            counts.errors.append((path, str(error)))
            counts.processed += 1
            progress(counts)
            continue
        group.append((path, wave, rate))
        windows += window_count(wave.shape[-1], rate, model.config)
        if windows >= batch_size:
            score_group()
            group, windows = [], 0
    if group:
        score_group()
    return counts
