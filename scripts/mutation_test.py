"""Mutation testing of the core files with mutmut, each file against only the tests that concern it.

    nice -n 10 .venv/bin/python scripts/mutation_test.py [FILE ...] [--fresh] [--max-children N]

mutmut copies the code to `mutants/`, breaks it one small change at a time and runs the tests that reach the
changed function; a mutant the tests still pass ("survived") is a bug they would miss. One `mutmut run` over every
core file would run the whole model test set for each mutant of a shared function (the router's forward is reached
by every model test), so each file runs in its own scratch copy under `.mutation/<file>/` whose `[tool.mutmut]`
keeps the base settings of pyproject.toml and sets `only_mutate` and the test selection from `TESTS_BY_FILE` below.
Results are cached there: a rerun only tries new or changed functions (`--fresh` starts over). Prints the score
table (markdown) and writes each file's survivors, with their diffs, to `.mutation/<file>/survivors.txt`.

Too slow for CI on 2 cores (minutes to tens of minutes per file); run it by hand before closing a change to these
files. Scores are in the README's Development section.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
SCRATCH = REPO / ".mutation"
# the demo's tests import space_app; the SSL pre-training tests read configs/
COPIED = ["modeling_molex", "training", "tests", "space_app", "configs", "pyproject.toml"]

# Core file -> the tests that pin its behaviour (most valuable first). Keep each list fast: every surviving mutant
# of a function runs all the listed tests that reach that function.
TESTS_BY_FILE = {
    "modeling_molex/router.py": [
        "tests/test_router.py",
        "tests/test_router_edges.py",
        "tests/test_router_expert_dropout.py",
        "tests/test_aux_losses.py",
        "tests/test_mixture_math.py",
        "tests/test_hf_surfaces.py::test_set_active_packs_routes_only_to_their_experts",
    ],
    "modeling_molex/layers.py": [
        "tests/test_mixture_math.py",
        "tests/test_layers.py",
        "tests/test_router_edges.py",
        "tests/test_expert_pack_roundtrip.py",
        "tests/test_modeling.py::test_top_k_selects_exactly_k_and_matches_a_reference_loop",
        "tests/test_hf_surfaces.py::test_set_active_packs_routes_only_to_their_experts",
    ],
    # (the evaluate-module test runs the metric in a subprocess, outside mutmut's reach)
    "training/metrics/asvspoof_metrics.py": [
        "tests/test_metrics.py",
        "tests/test_metrics_contracts.py",
        "-k",
        "not evaluate_load",
    ],
    "training/metrics/calibration.py": [
        "tests/test_calibration.py",
        "tests/test_calibration_fit.py",
        "tests/test_logistic_fit.py",
    ],
    "modeling_molex/experts_io.py": [
        "tests/test_expert_pack_roundtrip.py",
        "tests/test_expert_pack_files.py",
        "tests/test_experts_io.py",
    ],
    # test_modeling's per-family/per-projection sweeps reach forward() ~60 times; they are left out here for speed.
    "modeling_molex/modeling_molex.py": [
        "tests/test_model_lifecycle.py",
        "tests/test_class_weights.py",
        "tests/test_aux_losses.py",
        "tests/test_layers.py",
        "tests/test_expert_pack_roundtrip.py",
        "tests/test_experts_io.py",
        "tests/test_modeling.py",
        "tests/test_hf_surfaces.py",
        "tests/test_model_inputs.py",
        "-k",
        "not each_target_module_really and not bf16_forward and not no_graph_below",
    ],
    # Direct unit tests only: the end-to-end checkpoint tests (test_checkpoints, test_train_loop) run a training in
    # a fixture, seconds per mutant, and pin nothing that the unit tests do not.
    "training/trainer/checkpointing.py": [
        "tests/test_checkpointing_units.py",
        "tests/test_train.py::test_half_written_checkpoints_are_never_resumed",
    ],
    # test_train_loop's end-to-end runs train for seconds per mutant; test_loop_units pins the same decisions on a
    # hand-assembled run in milliseconds (and setup_run on the tiny synthetic corpus).
    "training/trainer/loop.py": [
        "tests/test_loop_units.py",
        "tests/test_train_loop.py::test_launches_that_would_train_silently_wrong_are_refused",
    ],
    # ----- the user-facing files (issue 19): scoring, decoding, novelty, pipeline, Hub upload, the CLI -----
    # Subprocess tests (fresh-process loads, the CLI as a command) run outside mutmut's reach: deselected.
    "modeling_molex/scoring.py": [
        "tests/test_scoring_units.py",
        "tests/test_score_waveform.py",
        "tests/test_score_numbers.py",
        "tests/test_thread_safety.py::test_one_pipeline_shared_by_threads_equals_sequential_calls",
        "tests/test_bounded_decoding.py::test_score_file_and_read_audio_share_the_decoders_limit",
        "tests/test_bounded_decoding.py::test_memory_error_while_scoring_a_file_names_the_file",
        "tests/test_score_cli.py",
        "tests/test_evaluate_model.py",
        "-m",
        "not slow",
    ],
    "modeling_molex/audio_io.py": [
        "tests/test_audio_io_units.py",
        "tests/test_audio_io.py",
        "tests/test_score_waveform.py",
        "tests/test_score_numbers.py",
        "tests/test_data.py",
        "-m",
        "not slow",
    ],
    # mutmut's `mutants/` copy has no space_app/, so the demo's tests cannot run there; test_novelty.py pins the
    # same behaviour directly.
    "modeling_molex/novelty.py": [
        "tests/test_novelty.py",
        "tests/test_score_waveform.py::test_novelty_comes_from_the_signatures_shipped_with_the_model",
        "tests/test_analyze_experts.py",
        "-m",
        "not slow",
    ],
    "modeling_molex/pipeline_molex.py": [
        "tests/test_pipeline_molex.py",
        "tests/test_score_waveform.py::test_a_pipeline_built_from_a_model_object_uses_the_same_path",
        "-m",
        "not slow",
    ],
    # The kill -9 save tests run in subprocesses (slow, outside mutmut's reach): deselected.
    "modeling_molex/hub_upload.py": [
        "tests/test_hub_upload_units.py",
        "tests/test_push_to_hub.py",
        "tests/test_atomic_saves.py",
        "-m",
        "not slow",
    ],
    # test_score_cli_units.py pins the CLI's own decisions with a recording fake run (milliseconds per test).
    "training/score_cli.py": ["tests/test_score_cli_units.py", "tests/test_score_cli.py", "-m", "not slow"],
    # The data-scale tests (5,000-row corpus, seconds each) pin speed and memory, not decisions: left out.
    "training/data/protocols.py": [
        "tests/test_protocol_safety.py",
        "tests/test_protocol_fields.py",
        "tests/test_data.py",
        "tests/test_split_leaks.py",
        "tests/test_scored_splits.py",
        "-m",
        "not slow",
    ],
    "training/encoders/ssl_pool.py": [
        "tests/test_ssl_pool.py",
        "tests/test_ssl_hygiene.py",
        "tests/test_ssl_pretraining.py",
        "-m",
        "not slow",
    ],
    # test_compare.py trains every row (a minute per mutant); the units pin the bookkeeping in seconds.
    "training/compare.py": ["tests/test_compare_units.py"],
    # The end-to-end analyses (slow, seconds each) pin nothing the fast units and the monkeypatched analyses do not.
    "training/analysis/analyze_experts.py": ["tests/test_analyze_experts.py", "-m", "not slow"],
}

STATUS_BY_EMOJI = {
    "🎉": "killed",
    "🙁": "survived",
    "⏰": "timeout",
    "🤔": "suspicious",
    "🫥": "no tests",
    "🔇": "skipped",
}


def slug(path: str) -> str:
    return path.replace("/", "__").removesuffix(".py")


def prepare(source: str, fresh: bool) -> Path:
    """Scratch copy of the project with a `[tool.mutmut]` for this one file (copy2 keeps mtimes, so mutmut's
    cache sees which files really changed)."""
    workdir = SCRATCH / slug(source)
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "artifacts")
    for name in COPIED:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, workdir / name, dirs_exist_ok=True, ignore=ignore, copy_function=shutil.copy2)
        else:
            shutil.copy2(REPO / name, workdir / name)
    base = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]
    settings = {
        **{k: v for k, v in base.items() if k not in ("only_mutate", "pytest_add_cli_args_test_selection")},
        "only_mutate": [source],
        "pytest_add_cli_args_test_selection": TESTS_BY_FILE[source],
    }
    text = (workdir / "pyproject.toml").read_text()
    text = re.sub(r"\n\[tool\.mutmut\]\n(?:(?!\n\[).)*", "\n", text, flags=re.S)  # drop the base section
    text += "\n[tool.mutmut]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
    (workdir / "pyproject.toml").write_text(text)
    return workdir


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the mutated copy must be what tests import
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "GRADIO_ANALYTICS_ENABLED": "False"}
    env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # one core per mutant worker
    return env


def mutmut(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mutmut", *args]
    return subprocess.run(command, cwd=workdir, env=environment(), capture_output=True, text=True)


def results(workdir: Path) -> dict[str, str]:
    """mutant name -> status, from `mutmut results --all true`."""
    output = mutmut(workdir, "results", "--all", "true").stdout
    statuses = {}
    for line in output.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name and status:
            statuses[name] = status
    return statuses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help=f"core files (default: all of {list(TESTS_BY_FILE)})")
    parser.add_argument("--fresh", action="store_true", help="forget cached results and start over")
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutant workers")
    args = parser.parse_args(argv)
    unknown = [f for f in args.files if f not in TESTS_BY_FILE]
    if unknown:
        parser.error(f"no test selection for {unknown}; known files: {list(TESTS_BY_FILE)}")
    rows = ["| file | mutants | killed | survived | other | score |", "|---|---:|---:|---:|---:|---:|"]
    for source in args.files or list(TESTS_BY_FILE):
        workdir = prepare(source, args.fresh)
        run = mutmut(workdir, "run", "--max-children", str(args.max_children))
        (workdir / "mutmut_run.log").write_text(run.stdout + run.stderr)
        statuses = results(workdir)
        if run.returncode != 0 or not statuses:
            print(
                f"{source}: mutmut failed (exit {run.returncode}), see {workdir / 'mutmut_run.log'}", file=sys.stderr
            )
            continue
        killed = sum(s in ("killed", "timeout") for s in statuses.values())
        survived = [name for name, s in statuses.items() if s == "survived"]
        other = len(statuses) - killed - len(survived)
        score = 100.0 * killed / len(statuses)
        rows.append(f"| `{source}` | {len(statuses)} | {killed} | {len(survived)} | {other} | {score:.0f} % |")
        with open(workdir / "survivors.txt", "w") as handle:
            for name, status in sorted(statuses.items()):
                if status not in ("killed", "timeout"):
                    handle.write(f"## {name}: {status}\n{mutmut(workdir, 'show', name).stdout}\n")
        print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
