"""One `molex-score` run on one or many processes: prepare the output, score this process's shard, merge.

1. The main process takes the output's lock, then prepares: a fresh run clears the output, its shards, progress and
   errors files; `--resume` checks their headers and cuts torn last lines. Every process waits for it.
2. Every process reads which files already have a row (the output and every shard, of any process count), takes
   its share of the input (`split_files`) and scores the files of it that have none into its table: the output
   itself when alone, else its shard.
3. The main process waits for the others' progress files to say done, merges the shards and errors, and prints
   the summary. A kill -9 anywhere loses at most the torn last line of a shard; `--resume` scores the rest once.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm
from transformers import AutoModelForAudioClassification

from training.scoring import ScoringError
from training.scoring.processes import ScoringProcesses, process_alive, read_progress, write_progress
from training.scoring.score_loop import RowWriter, ShardCounts, TableWriteError, score_shard
from training.scoring.shard_files import (
    OutputLock,
    errors_path,
    existing_error_shards,
    existing_progress_files,
    existing_shards,
    merge_tables,
    progress_path,
    shard_path,
    split_files,
    stale_temporaries,
    write_atomically,
)
from training.scoring.table_format import (
    ERROR_COLUMNS,
    OFFICIAL_COLUMNS,
    TSV_COLUMNS,
    escape_field,
    format_line,
    iter_rows,
    path_key,
    read_keys,
    write_header,
)


logger = logging.getLogger("molex.score")
POLL_SECONDS = 0.2


@dataclass
class RunOptions:
    model: str
    output: Path
    batch_size: int
    max_seconds: float | None
    official: bool
    resume: bool


@dataclass
class RunSummary:
    scored: int
    silent: int
    errors: list[tuple[str, str]]  # (path, reason) as the errors file holds them (escaped), input order
    seconds: float
    processed: int


def prepare_output(output: Path, columns, resume: bool, world: int) -> OutputLock:
    """Lock `output` and clear (fresh run) or check and repair (--resume) it and its companions. Main process only."""
    folder = output.parent
    if folder.exists() and not folder.is_dir():
        raise ScoringError(f"cannot write to {folder}: it is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = OutputLock(output).acquire()
    except OSError as error:
        raise ScoringError(f"cannot write to {folder}: {error.strerror or error}") from None
    try:
        leftovers = [*existing_progress_files(output), *existing_error_shards(output), *stale_temporaries(output)]
        for leftover in [*leftovers, errors_path(output)]:
            leftover.unlink(missing_ok=True)
        shards = existing_shards(output)
        if resume:
            for table in ([output] if output.exists() else []) + shards:
                for _ in iter_rows(table, columns, repair=True):  # checks every line; cuts a torn last one
                    pass
            if world == 1 and not output.exists():
                write_header(output, columns)
        else:
            for shard in shards:
                shard.unlink()
            if world == 1:
                write_header(output, columns)  # the rows are appended to it as they come
            else:
                output.unlink(missing_ok=True)  # only the merge writes it: no stale result while the shards fill
    except OSError as error:
        lock.release()
        raise TableWriteError(output, error) from None
    except ValueError as error:
        lock.release()
        raise ScoringError(f"--resume: {error}") from None
    return lock


def load_model(name: str, processes: ScoringProcesses):
    """The model on this process's device, the main process first (it copies the remote code into the cache)."""
    failure = ""
    model = None
    with processes.main_process_first():
        try:
            model = AutoModelForAudioClassification.from_pretrained(name, trust_remote_code=True).eval()
            model.to(processes.device)
        except (OSError, ValueError, RuntimeError) as error:
            failure = f"cannot load the model {name!r}: {error}"
    if not processes.all_agree(not failure):
        raise ScoringError(failure or "another process could not load the model (see its message)")
    return model


def run_scoring(options: RunOptions, files: list[Path], processes: ScoringProcesses) -> RunSummary | None:
    """Score `files` into `options.output`; the summary on the main process, None on the others."""
    output, world, rank = options.output, processes.world, processes.rank
    columns = OFFICIAL_COLUMNS if options.official else TSV_COLUMNS
    key = (lambda path: path.stem) if options.official else path_key
    lock, failure = None, ""
    if processes.is_main:
        try:
            lock = prepare_output(output, columns, options.resume, world)
        except ScoringError as error:
            failure = str(error)
    try:
        if not processes.all_agree(not failure):
            raise ScoringError(failure or "the main process could not prepare the output (see its message)")
        if not processes.same_everywhere("\n".join(map(str, files))):
            raise ScoringError("the processes found different input files: PATHS must name the same files on every "
                               "machine")  # fmt: skip
        done = set()
        for table in [output, *existing_shards(output)]:
            done |= read_keys(table, columns)
        todo = [path for path in split_files(files, rank, world) if key(path) not in done]
        model = load_model(options.model, processes)
        return _score_and_merge(options, files, processes, model, todo, done, columns, key)
    finally:
        if lock is not None:
            lock.release()


def _score_and_merge(options, files, processes, model, todo, done, columns, key) -> RunSummary | None:
    output, world, rank = options.output, processes.world, processes.rank
    table = output if world == 1 else shard_path(output, rank, world)
    progress_file = progress_path(output, rank, world)
    started = time.perf_counter()
    already = sum(key(path) in done for path in files)
    bar = tqdm(total=len(files), initial=already, unit="file", desc="scoring", disable=None if processes.is_main
               else True)  # fmt: skip

    def report(counts: ShardCounts, state: str = "running", message: str = "") -> None:
        if world > 1:
            write_progress(progress_file, state=state, message=message, todo=len(todo), processed=counts.processed,
                           scored=counts.scored, silent=counts.silent, unreadable=len(counts.errors))  # fmt: skip
        if processes.is_main:
            others = [read_progress(progress_path(output, r, world)) or {} for r in range(world) if r != rank]
            bar.n = already + counts.processed + sum(other.get("processed", 0) for other in others)
            bar.set_postfix(unreadable=len(counts.errors) + sum(other.get("unreadable", 0) for other in others))

    counts = ShardCounts()
    try:
        if world > 1 and not table.exists():
            write_header(table, columns)
        report(counts)
        writer = RowWriter(table, options.official, int(model.config.adapter.top_k))
        try:
            counts = score_shard(todo, model, writer, batch_size=options.batch_size,
                                 max_seconds=options.max_seconds, progress=report)  # fmt: skip
        finally:
            writer.close()
        error_rows = [format_line([path_key(path), escape_field(reason)]) for path, reason in counts.errors]
        if world > 1 and error_rows:
            shard = shard_path(errors_path(output), rank, world)
            write_atomically(shard, [format_line(ERROR_COLUMNS), *error_rows])
    except (ScoringError, OSError) as error:
        if world > 1:
            report(counts, "failed", str(error))
        bar.close()
        if isinstance(error, ScoringError):
            raise
        raise TableWriteError(table, error) from None
    report(counts, "done")
    if not processes.is_main:
        bar.close()
        return None
    reports = [_wait_for(output, r, world, lambda: report(counts, "done")) for r in range(1, world)]
    bar.close()
    try:
        return _merge(options, files, columns, key, counts, reports, error_rows, started)
    except OSError as error:
        raise TableWriteError(output, error) from None


def _wait_for(output: Path, rank: int, world: int, refresh) -> dict:
    """The final progress report of process `rank`, polling its progress file (`refresh()` moves the bar meanwhile).
    A process on this machine that ended without saying done (killed outside a launcher that would stop us too)
    stops the wait instead of hanging it."""
    while True:
        progress = read_progress(progress_path(output, rank, world)) or {}
        if progress.get("state") == "done":
            return progress
        if progress.get("state") == "failed":
            raise ScoringError(f"process {rank} of {world} stopped: {progress.get('message')}; the rows written so "
                               "far are kept: rerun with --resume")  # fmt: skip
        if progress and not process_alive(progress):
            if (read_progress(progress_path(output, rank, world)) or {}).get("state") != "done":
                raise ScoringError(f"process {rank} of {world} (pid {progress.get('pid')}) ended before finishing "
                                   "its shard; the rows written so far are kept: rerun with --resume")  # fmt: skip
        refresh()
        time.sleep(POLL_SECONDS)


def _merge(options, files, columns, key, counts, reports, error_rows, started) -> RunSummary:
    output = options.output
    if existing_shards(output):
        merge_tables(output, columns, [key(path) for path in files])
    errors = [(path_key(path), escape_field(reason)) for path, reason in counts.errors]
    shards = existing_error_shards(output)
    if shards:  # several processes: their unreadable files, in input order
        merge_tables(errors_path(output), ERROR_COLUMNS, [path_key(path) for path in files], shards)
        errors = [tuple(line.rstrip("\n").split("\t")) for _, line in iter_rows(errors_path(output), ERROR_COLUMNS)]
    elif error_rows:
        write_atomically(errors_path(output), [format_line(ERROR_COLUMNS), *error_rows])
    for progress in existing_progress_files(output):
        progress.unlink(missing_ok=True)
    return RunSummary(
        scored=counts.scored + sum(report["scored"] for report in reports),
        silent=counts.silent + sum(report["silent"] for report in reports),
        errors=errors,
        seconds=time.perf_counter() - started,
        processed=counts.processed + sum(report["processed"] for report in reports),
    )
