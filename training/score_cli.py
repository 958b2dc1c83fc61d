"""`molex-score`: score a folder of audio files with a MoLEx model, through the model's own scoring path.

    molex-score PATH... --model DIR_OR_REPO_ID [--output scores.tsv] [--batch_size 8] [--device cpu]
                [--official] [--resume]

PATH: audio files, folders (searched recursively for audio suffixes) or list files (`.txt`/`.lst`/`.scp`: one path
per line, relative to the list file's folder; `#` starts a comment). Each file is decoded like the demo and the
pipeline decode it (soundfile, else ffmpeg) and scored with `model.score_waveforms` (windows batched across files).

The TSV (`--output`, default `scores.tsv`) has one row per scored file, appended as soon as it is scored:
    path  score  p_bonafide  verdict  duration_s  novelty  nearest  top_experts
`score` is the calibrated LLR when the model stores a calibration (else logit[bonafide] - logit[spoof]);
`verdict` is bonafide / spoof, or `near-silent` (no score: there is no speech to judge). `top_experts` lists, per
router, the experts most used (`layer_0:1+3`). With `--official` the file is instead the ASVspoof 5 score file
(`filename<TAB>cm-score`, the file stem as filename; near-silent files are left out and counted).

Unreadable files never stop the run: they are counted, listed at the end and written with their reason to
`<output>.errors.tsv`. `--resume` keeps the rows already in the output and scores only the missing files.
Exit status: 0 when every file was scored, 1 when some could not be read, 2 on a usage error.
"""

import argparse
import csv
import logging
import os
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForAudioClassification

from training.metrics.score_files import SCORE_HEADER


AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".oga", ".webm", ".m4a", ".aac", ".mp4", ".aiff", ".aif",
                  ".au", ".wma", ".mka")  # fmt: skip
LIST_SUFFIXES = (".txt", ".lst", ".list", ".scp")
COLUMNS = ("path", "score", "p_bonafide", "verdict", "duration_s", "novelty", "nearest", "top_experts")
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


def top_experts(expert_usage: torch.Tensor, router_names: list[str], top_k: int) -> str:
    """`layer_0:1+3 layer_1:0+2`: per router, the `top_k` experts with the largest usage."""
    parts = []
    for name, usage in zip(router_names, expert_usage, strict=True):
        chosen = sorted(torch.topk(usage, k=min(top_k, usage.numel())).indices.tolist())
        parts.append(f"{name}:{'+'.join(str(e) for e in chosen)}")
    return " ".join(parts)


def result_row(path: Path, result, top_k: int) -> dict[str, str]:
    if result.silent:
        return {"path": str(path), "score": "", "p_bonafide": "", "verdict": "near-silent",
                "duration_s": f"{result.duration:.3f}", "novelty": "", "nearest": "", "top_experts": ""}  # fmt: skip
    novelty = result.novelty
    return {
        "path": str(path),
        "score": f"{result.score:.6f}",
        "p_bonafide": f"{result.bonafide_probability:.6f}",
        "verdict": result.verdict,
        "duration_s": f"{result.duration:.3f}",
        "novelty": "" if novelty is None else f"{novelty.distance:.4f}",
        "nearest": "" if novelty is None else novelty.nearest,
        "top_experts": top_experts(result.expert_usage, result.router_names, top_k),
    }


def read_done(output: Path, official: bool) -> set[str]:
    """Keys (paths, or file stems for --official) of the complete rows already in `output`; a torn last line (a
    killed run) is cut off so that the file stays well-formed."""
    text = output.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        output.write_text(text, encoding="utf-8")
        logger.warning("%s: dropped an incomplete last line left by an interrupted run", output)
    lines = text.splitlines()
    header = SCORE_HEADER if official else COLUMNS
    if not lines or tuple(lines[0].split("\t")) != tuple(header):
        raise ValueError(f"{output}: --resume expects a file written by molex-score with header {header}")
    return {line.split("\t", 1)[0] for line in lines[1:] if line.strip()}


def score_files(
    files: list[Path], model, output: Path, batch_size: int, official: bool, resume: bool
) -> tuple[int, int, list[tuple[Path, str]]]:
    """Score `files` into `output`; returns (scored, near-silent, [(file, reason) for unreadable ones])."""
    key = (lambda p: p.stem) if official else str
    if official:
        stems: dict[str, Path] = {}
        for path in files:
            if path.stem in stems:
                raise ValueError(f"--official names trials by file stem, and {stems[path.stem]} and {path} share "
                                 f"the stem {path.stem!r}")  # fmt: skip
            stems[path.stem] = path
    done = read_done(output, official) if resume and output.is_file() else set()
    todo = [p for p in files if key(p) not in done]
    if not resume or not output.is_file():
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("\t".join(SCORE_HEADER if official else COLUMNS) + "\n", encoding="utf-8")
    top_k = int(model.config.adapter.top_k)
    scored = silent = 0
    errors: list[tuple[Path, str]] = []
    with (
        output.open("a", encoding="utf-8", newline="") as handle,
        tqdm(total=len(todo), unit="file", desc="scoring", disable=None) as bar,
    ):
        for first in range(0, len(todo), batch_size):
            waves, rates, names, paths = [], [], [], []
            for path in todo[first : first + batch_size]:
                try:
                    wave, rate = model.read_audio(path)
                except (ValueError, OSError) as error:
                    errors.append((path, str(error)))
                    continue
                waves.append(wave)
                rates.append(rate)
                names.append(path.name)
                paths.append(path)
            results = _score_group(model, waves, rates, names, paths, batch_size, errors)
            for path, result in results:
                if official:
                    if result.silent:
                        silent += 1
                        continue
                    handle.write(f"{path.stem}\t{result.score:.6f}\n")
                else:
                    silent += bool(result.silent)
                    row = result_row(path, result, top_k)
                    handle.write("\t".join(row[c] for c in COLUMNS) + "\n")
                scored += 1
            handle.flush()
            bar.update(len(todo[first : first + batch_size]))
            bar.set_postfix(unreadable=len(errors))
    return scored, silent, errors


def _score_group(model, waves, rates, names, paths, batch_size, errors) -> list[tuple[Path, object]]:
    """Score a group together; if one clip is refused (e.g. NaN samples), score the rest one by one."""
    if not waves:
        return []
    try:
        return list(zip(paths, model.score_waveforms(waves, rates, names=names, batch_size=batch_size), strict=True))
    except ValueError:
        scored = []
        for wave, rate, name, path in zip(waves, rates, names, paths, strict=True):
            try:
                scored.append((path, model.score_waveform(wave, rate, names=[name], batch_size=batch_size)))
            except ValueError as error:
                errors.append((path, str(error)))
        return scored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="molex-score", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="audio files, folders or list files")
    parser.add_argument("--model", required=True, help="MoLEx model folder or Hub repo id")
    parser.add_argument("--output", default="scores.tsv", help="TSV to write (default: scores.tsv)")
    parser.add_argument("--batch_size", type=int, default=8, help="files per group and windows per forward pass")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--official", action="store_true", help="write the ASVspoof 5 score-file format instead")
    parser.add_argument("--resume", action="store_true", help="keep rows already in --output, score the rest")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    files = collect_inputs(args.paths)
    if not files:
        parser.error(f"no audio files found in {args.paths}")
    model = AutoModelForAudioClassification.from_pretrained(args.model, trust_remote_code=True).eval()
    model.to(args.device)
    output = Path(args.output)
    try:
        scored, silent, errors = score_files(files, model, output, args.batch_size, args.official, args.resume)
    except ValueError as error:
        parser.error(str(error))
    errors_path = output.with_name(output.name + ".errors.tsv")
    if errors:
        with errors_path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(["path", "error"])
            writer.writerows((str(path), reason) for path, reason in errors)
    elif errors_path.is_file() and not args.resume:
        os.remove(errors_path)  # a stale list from an earlier run would mislead
    summary = f"scored {scored} of {len(files)} files into {output}"
    if silent:
        summary += f"; {silent} near-silent (no verdict{', left out of the score file' if args.official else ''})"
    print(summary, file=sys.stderr)
    if errors:
        print(f"{len(errors)} files could not be read (listed in {errors_path}):", file=sys.stderr)
        for path, reason in errors[:5]:
            print(f"  {path}: {reason}", file=sys.stderr)
        if len(errors) > 5:
            print(f"  ... and {len(errors) - 5} more", file=sys.stderr)
    return 1 if errors else 0


def run() -> None:
    """Console-script entry point (`molex-score`)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
