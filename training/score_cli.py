"""`molex-score`: score audio files with a MoLEx model, through the model's own scoring path, on one process or many.

    molex-score PATH... --model DIR_OR_REPO_ID [--output scores.tsv] [--batch_size 8] [--device auto]
                [--max_seconds 600] [--official] [--resume]
    accelerate launch [--multi_gpu] --num_processes N [--num_machines M ...] -m training.score_cli PATH... --model ...

PATH: audio files, folders (searched recursively for audio suffixes, sorted) or list files (`.txt`/`.lst`/`.scp`:
one path per line, relative to the list file's folder; `#` starts a comment). Each file is decoded like the demo and
the pipeline decode it (soundfile, else ffmpeg), refused when longer than --max_seconds, and scored with
`model.score_waveforms`: files are grouped until a group holds --batch_size windows, so short files share forward
passes and a long file is scored alone.

The TSV (`--output`, default `scores.tsv`) has one row per scored file, appended as soon as its group is scored:
    path  score  p_bonafide  verdict  duration_s  novelty  nearest  top_experts
`score` is the calibrated LLR when the model stores a calibration (else logit[bonafide] - logit[spoof]);
`verdict` is bonafide / spoof, or `near-silent` (no score: there is no speech to judge). `top_experts` lists, per
router, the experts most used (`layer_0:1+3`). Text fields are escaped (\\\\ \\t \\n \\r, \\xHH for a byte of a name that
is not UTF-8, \\uXXXX for a Unicode line separator): one line per file whatever its name. With --official the file is
instead the ASVspoof 5 score file (`filename<TAB>cm-score`, the file stem as filename; near-silent files are left out
and counted; a stem that a trial name cannot hold is refused into the errors file).

Many processes: under `accelerate launch` / `torchrun` each process scores every N-th file into
`<output>.shard-R-of-N` and the main process merges the shards into `<output>` (rows in input order, the rows of a
1-process run). On CPU use `accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N`:
`accelerate launch --cpu --num_processes N` starts ONE process. On several machines the output folder must be
shared by all of them, like the audio.

Unreadable files never stop the run: they are counted, listed at the end and written with their reason to
`<output>.errors.tsv` (written afresh by every run). `--resume` keeps the rows already in the output and in shards
of any process count (a torn last line from a killed process is dropped) and scores only the missing files.
`<output>.lock` keeps a second run off the same output while one runs.
Exit status: 0 when every file was scored, 1 when some could not be read, 2 on a usage error or when the run cannot
go on (the reason is printed; rows already written are kept for --resume).
"""

import argparse
import logging
import math
import sys
from pathlib import Path

from transformers import AutoModelForAudioClassification  # noqa: F401  (where tests and users patch the loader)

from modeling_molex.audio_io import DEFAULT_MAX_SECONDS
from training.scoring import ScoringError
from training.scoring.processes import ScoringProcesses, resolve_device
from training.scoring.scoring_run import RunOptions, run_scoring
from training.scoring.table_format import TSV_COLUMNS


AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".oga", ".webm", ".m4a", ".aac", ".mp4", ".aiff", ".aif",
                  ".au", ".wma", ".mka")  # fmt: skip
LIST_SUFFIXES = (".txt", ".lst", ".list", ".scp")
COLUMNS = TSV_COLUMNS
logger = logging.getLogger("molex.score")


def collect_inputs(paths: list[str]) -> list[Path]:
    """Files in order given (folders expanded recursively and sorted, list files read), duplicates dropped."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            for line in path.read_text(encoding="utf-8").splitlines():
                entry = line.split("#", 1)[0].strip()
                if entry:
                    found.append(Path(entry) if Path(entry).is_absolute() else path.parent / entry)
        else:
            found.append(path)  # a file, or a missing one: reported as unreadable, never silently skipped
    return list(dict.fromkeys(found))


def seconds_limit(text: str) -> float:
    """--max_seconds: a finite number >= 0 (0: no limit)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (0: no limit), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="molex-score", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="audio files, folders or list files")
    parser.add_argument("--model", required=True, help="MoLEx model folder or Hub repo id")
    parser.add_argument("--output", default="scores.tsv", help="TSV to write (default: scores.tsv)")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=8,
        help="windows per forward pass; files are grouped until a group holds this many (default: 8)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="torch device: auto (CUDA when there is a GPU, one per process under a launcher, else "
        "CPU), cpu, cuda, cuda:1, ... (default: auto)",
    )
    parser.add_argument(
        "--max_seconds",
        type=seconds_limit,
        default=DEFAULT_MAX_SECONDS,
        help=f"refuse (into the errors file) a file longer than this: the length is read from the container "
        f"before decoding and no file decodes past it, whatever its header claims; 0 turns the limit off "
        f"(default: {DEFAULT_MAX_SECONDS:g} s)",
    )
    parser.add_argument("--official", action="store_true", help="write the ASVspoof 5 score-file format instead")
    parser.add_argument("--resume", action="store_true", help="keep rows already in --output, score the rest")
    return parser  # fmt: skip


def print_summary(summary, total: int, output: Path, world: int, official: bool) -> None:
    where = f" on {world} processes" if world > 1 else ""
    rate = summary.processed / summary.seconds if summary.seconds > 0 else 0.0
    line = f"scored {summary.scored} of {total} files into {output}{where} in {summary.seconds:.1f} s"
    line += f" ({rate:.1f} files/s)"
    if summary.silent:
        line += f"; {summary.silent} near-silent (no verdict{', left out of the score file' if official else ''})"
    print(line, file=sys.stderr)
    if summary.errors:
        print(f"{len(summary.errors)} files could not be read (listed in {output}.errors.tsv):", file=sys.stderr)
        for path, reason in summary.errors[:5]:
            print(f"  {path}: {reason}", file=sys.stderr)
        if len(summary.errors) > 5:
            print(f"  ... and {len(summary.errors) - 5} more", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    files = collect_inputs(args.paths)
    if not files:
        parser.error(f"no audio files found in {args.paths}")
    if args.official:
        stems: dict[str, Path] = {}
        for path in files:
            if path.stem in stems:
                parser.error(f"--official names trials by file stem, and {stems[path.stem]} and {path} share the "
                             f"stem {path.stem!r}")  # fmt: skip
            stems[path.stem] = path
    options = RunOptions(args.model, Path(args.output), args.batch_size, args.max_seconds or None, args.official,
                         args.resume)  # fmt: skip
    try:
        processes = ScoringProcesses.start(device)
        if not processes.is_main:
            logging.getLogger().setLevel(logging.WARNING)
        summary = run_scoring(options, files, processes)
    except ScoringError as error:
        print(f"molex-score: error: {error}", file=sys.stderr)
        return 2
    if summary is None:  # not the main process: the main one reports for all
        return 0
    print_summary(summary, len(files), options.output, processes.world, args.official)
    return 1 if summary.errors else 0


def run() -> None:
    """Console-script entry point (`molex-score`)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
