"""`molex-score`'s own decisions, without a model: the inputs it collects, the options and their defaults, what it
hands the scoring run, its usage errors, exit codes, log format and the closing summary (issue 19, item 10). The
scoring run and the process group are replaced by recording fakes, so each test takes milliseconds; the end-to-end
behaviour with a real model is in test_score_cli.py and test_score_output.py."""

import argparse
import logging
from pathlib import Path

import pytest
import torch

import training.score_cli as score_cli
from training.scoring import ScoringError
from training.scoring.processes import ScoringProcesses
from training.scoring.scoring_run import RunOptions, RunSummary


# ----- collect_inputs ----------------------------------------------------------------------------------------------


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_a_folder_gives_its_audio_files_recursively_and_sorted_never_a_folder_or_another_file(tmp_path):
    folder = tmp_path / "clips"
    b, a = touch(folder / "b.FLAC"), touch(folder / "a.wav")
    nested = touch(folder / "take.wav" / "c.mp3")  # a folder whose name ends in an audio suffix
    touch(folder / "notes.txt")
    touch(folder / "cover.jpg")
    assert score_cli.collect_inputs([str(folder)]) == [a, b, nested]


def test_inputs_keep_the_order_given_and_each_file_once(tmp_path):
    first = touch(tmp_path / "z_first.wav")
    folder = tmp_path / "clips"
    inside = touch(folder / "a.wav")
    missing = tmp_path / "missing.wav"  # kept: reported as unreadable later, never silently skipped
    found = score_cli.collect_inputs([str(first), str(folder), str(missing), str(inside), str(first)])
    assert found == [first, inside, missing]


def test_a_list_file_gives_its_paths_relative_to_its_folder_without_comments(tmp_path):
    listed = tmp_path / "lists" / "TRIALS.TXT"
    listed.parent.mkdir()
    absolute = tmp_path / "elsewhere" / "abs.wav"
    listed.write_text(
        f"# the trials\nrel.wav  # take 1 # of 2\n\n{absolute}\n   sub/spaced.wav   \ncafé.wav\n",
        encoding="utf-8",
    )
    assert score_cli.collect_inputs([str(listed)]) == [
        listed.parent / "rel.wav",
        absolute,
        listed.parent / "sub" / "spaced.wav",
        listed.parent / "café.wav",
    ]


# ----- the options --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [("0", 0.0), ("0.5", 0.5), ("600", 600.0), ("1e3", 1000.0)])
def test_max_seconds_accepts_finite_numbers_from_zero(text, value):
    assert score_cli.seconds_limit(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [("ten", "expected a number of seconds, got 'ten'"), ("", "expected a number of seconds, got ''"),
     ("-1", "must be a finite number >= 0 (0: no limit), got '-1'"), ("-0.5", "got '-0.5'"),
     ("nan", "must be a finite number >= 0 (0: no limit), got 'nan'"), ("inf", "got 'inf'"), ("-inf", "got '-inf'")],
)  # fmt: skip
def test_max_seconds_refuses_anything_else_by_name(text, message):
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        score_cli.seconds_limit(text)
    assert message in str(refused.value)


def test_defaults_are_the_documented_ones():
    args = score_cli.build_parser().parse_args(["a.wav", "b.wav", "--model", "some/model"])
    assert args.paths == ["a.wav", "b.wav"] and args.model == "some/model"
    assert args.output == "scores.tsv" and args.batch_size == 8 and args.device == "auto"
    assert args.max_seconds == 600.0 and not args.official and not args.resume


def test_options_are_parsed_to_their_types():
    args = score_cli.build_parser().parse_args(
        ["a.wav", "--model", "m", "--output", "o.tsv", "--batch_size", "3", "--device", "cpu", "--max_seconds", "2.5",
         "--official", "--resume"]
    )  # fmt: skip
    assert (args.output, args.batch_size, args.device, args.official, args.resume) == ("o.tsv", 3, "cpu", True, True)
    assert args.max_seconds == 2.5 and isinstance(args.max_seconds, float)


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["a.wav"], "the following arguments are required: --model"),
     (["--model", "m"], "the following arguments are required: PATH"),
     (["a.wav", "--model", "m", "--max_seconds", "-1"], "argument --max_seconds: must be a finite number >= 0"),
     (["a.wav", "--model", "m", "--max_seconds", "ten"], "argument --max_seconds: expected a number of seconds")],
)  # fmt: skip
def test_a_missing_or_bad_option_is_a_usage_error_naming_it(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        score_cli.build_parser().parse_args(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: molex-score ") and message in err


def test_help_shows_the_module_text_and_every_option_with_its_default(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per option: the phrases below are not wrapped
    with pytest.raises(SystemExit) as stopped:
        score_cli.build_parser().parse_args(["--help"])
    assert stopped.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: molex-score [-h] --model MODEL") and "PATH [PATH ...]" in text.splitlines()[0]
    assert score_cli.__doc__ in text  # the description keeps its own line breaks (the usage lines, the TSV columns)
    options = " ".join(text.split("options:")[-1].split())  # the option table, spaces collapsed
    for phrase in (
        "--model MODEL MoLEx model folder or Hub repo id",
        "--output OUTPUT TSV to write (default: scores.tsv)",
        "--batch_size BATCH_SIZE windows per forward pass; files are grouped until a group holds this many "
        "(default: 8) --device",
        "torch device: auto (CUDA when there is a GPU, one per process under a launcher, else CPU), cpu, cuda, "
        "cuda:1, ... (default: auto)",
        "refuse (into the errors file) a file longer than this: the length is read from the container before "
        "decoding and no file decodes past it, whatever its header claims; 0 turns the limit off (default: 600 s)",
        "--official write the ASVspoof 5 score-file format instead",
        "--resume keep rows already in --output, score the rest",
    ):
        assert phrase in options, phrase
    assert "positional arguments: PATH audio files, folders or list files options:" in " ".join(text.split())


# ----- main, with a recording scoring run ---------------------------------------------------------------------------


class FakeRun:
    """Stands for `run_scoring` and `ScoringProcesses.start`: records what main hands them, returns `summary`."""

    def __init__(self, summary=None, rank: int = 0, world: int = 1, error: Exception | None = None):
        self.summary, self.rank, self.world, self.error = summary, rank, world, error
        self.calls = []
        self.devices = []

    def start(self, device):
        self.devices.append(device)
        return ScoringProcesses(self.rank, self.world, device)

    def run_scoring(self, options, files, processes):
        self.calls.append((options, files, processes))
        logging.getLogger("molex.score").info("loading the model")
        if self.error is not None:
            raise self.error
        return self.summary if processes.is_main else None


@pytest.fixture
def fresh_logging():
    """The root logger, restored (handlers and level) after the test: `start_main` takes pytest's capture handlers
    off it, so that main's `logging.basicConfig` configures it as in a fresh process, and the level main sets must
    not leak into other tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def summary(scored=2, silent=0, errors=(), seconds=4.0, processed=2) -> RunSummary:
    return RunSummary(scored=scored, silent=silent, errors=list(errors), seconds=seconds, processed=processed)


def start_main(monkeypatch, fake: FakeRun, argv: list[str]) -> int:
    """main(argv) with `fake` as the scoring run; needs the `fresh_logging` fixture."""
    monkeypatch.setattr(score_cli, "run_scoring", fake.run_scoring)
    monkeypatch.setattr(score_cli.ScoringProcesses, "start", fake.start)
    logging.getLogger().handlers[:] = []  # pytest adds its handlers when the test starts (see fresh_logging)
    return score_cli.main(argv)


def test_main_hands_the_run_its_options_files_and_device(monkeypatch, tmp_path, fresh_logging):
    fake = FakeRun(summary())
    a, b = touch(tmp_path / "a.wav"), touch(tmp_path / "b.wav")
    argv = [str(a), str(b), "--model", "org/model", "--output", str(tmp_path / "o.tsv"), "--batch_size", "1",
            "--device", "cpu", "--max_seconds", "42", "--official", "--resume"]  # fmt: skip
    assert start_main(monkeypatch, fake, argv) == 0
    [(options, files, processes)] = fake.calls
    assert options == RunOptions("org/model", tmp_path / "o.tsv", 1, 42.0, True, True)
    assert files == [a, b] and fake.devices == [torch.device("cpu")] and processes.device == torch.device("cpu")


@pytest.mark.parametrize(("given", "expected"), [([], 600.0), (["--max_seconds", "0"], None)], ids=["default", "off"])
def test_max_seconds_zero_turns_the_limit_off(monkeypatch, tmp_path, fresh_logging, given, expected):
    fake = FakeRun(summary())
    start_main(monkeypatch, fake, [str(touch(tmp_path / "a.wav")), "--model", "m", *given])
    assert fake.calls[0][0].max_seconds == expected


def usage_error(monkeypatch, capsys, argv) -> str:
    fake = FakeRun(summary())
    with pytest.raises(SystemExit) as stopped:
        start_main(monkeypatch, fake, argv)
    assert stopped.value.code == 2 and not fake.calls  # nothing is scored
    return capsys.readouterr().err


def test_usage_errors_name_the_option_or_the_files(monkeypatch, tmp_path, capsys, fresh_logging):
    clip = str(touch(tmp_path / "a.wav"))
    for batch_size in ("0", "-3"):
        err = usage_error(monkeypatch, capsys, [clip, "--model", "m", "--batch_size", batch_size])
        assert f"molex-score: error: --batch_size must be >= 1, got {batch_size}" in err
    err = usage_error(monkeypatch, capsys, [clip, "--model", "m", "--device", "toaster"])
    assert "molex-score: error: --device toaster: not a torch device" in err
    (tmp_path / "empty").mkdir()
    err = usage_error(monkeypatch, capsys, [str(tmp_path / "empty"), "--model", "m"])
    assert f"molex-score: error: no audio files found in ['{tmp_path / 'empty'}']" in err


def test_official_refuses_two_files_with_one_stem_naming_both(monkeypatch, tmp_path, capsys, fresh_logging):
    first, second, third = touch(tmp_path / "x" / "a.wav"), touch(tmp_path / "b.wav"), touch(tmp_path / "y" / "a.flac")
    err = usage_error(monkeypatch, capsys, [str(first), str(second), str(third), "--model", "m", "--official"])
    assert f"--official names trials by file stem, and {first} and {third} share the stem 'a'" in err
    fake = FakeRun(summary())
    assert start_main(monkeypatch, fake, [str(first), str(third), "--model", "m"]) == 0  # a TSV names full paths


def test_a_run_that_cannot_go_on_exits_2_with_its_reason(monkeypatch, tmp_path, capsys, fresh_logging):
    fake = FakeRun(error=ScoringError("cannot write to /nowhere: it is a file, not a folder"))
    assert start_main(monkeypatch, fake, [str(touch(tmp_path / "a.wav")), "--model", "m"]) == 2
    err = capsys.readouterr().err
    assert "molex-score: error: cannot write to /nowhere: it is a file, not a folder\n" in err
    assert "scored" not in err


def test_exit_status_says_whether_every_file_was_scored(monkeypatch, tmp_path, capsys, fresh_logging):
    argv = [str(touch(tmp_path / "a.wav")), "--model", "m"]
    assert start_main(monkeypatch, FakeRun(summary(errors=[("b.wav", "not audio")])), argv) == 1
    assert start_main(monkeypatch, FakeRun(summary()), argv) == 0


def test_the_main_process_logs_progress_and_the_summary(monkeypatch, tmp_path, capsys, fresh_logging):
    output = tmp_path / "o.tsv"
    argv = [str(touch(tmp_path / "a.wav")), "--model", "m", "--output", str(output), "--official"]
    assert start_main(monkeypatch, FakeRun(summary(scored=0, silent=1, processed=1)), argv) == 0
    err = capsys.readouterr().err
    assert "INFO molex.score: loading the model\n" in err
    assert f"scored 0 of 1 files into {output} in 4.0 s" in err and "left out of the score file" in err
    assert fresh_logging.level == logging.INFO


def test_other_processes_log_only_warnings_and_leave_the_summary_to_the_main_one(
    monkeypatch, tmp_path, capsys, fresh_logging
):
    fake = FakeRun(summary(errors=[("b.wav", "not audio")]), rank=1, world=2)
    assert start_main(monkeypatch, fake, [str(touch(tmp_path / "a.wav")), "--model", "m"]) == 0
    assert capsys.readouterr().err == "" and fresh_logging.level == logging.WARNING


def test_the_console_script_exits_with_mains_status(monkeypatch):
    monkeypatch.setattr(score_cli, "main", lambda argv=None: 1)
    with pytest.raises(SystemExit) as stopped:
        score_cli.run()
    assert stopped.value.code == 1


# ----- the closing summary ------------------------------------------------------------------------------------------


def printed_summary(capsys, run_summary, total=4, world=1, official=False) -> str:
    score_cli.print_summary(run_summary, total, Path("out/scores.tsv"), world, official)
    captured = capsys.readouterr()
    assert captured.out == ""  # everything goes to stderr: stdout stays clean for pipes
    return captured.err


def test_summary_line_counts_files_processes_and_speed(capsys):
    err = printed_summary(capsys, summary(scored=3, seconds=2.0, processed=4))
    assert err == "scored 3 of 4 files into out/scores.tsv in 2.0 s (2.0 files/s)\n"
    err = printed_summary(capsys, summary(scored=3, seconds=0.5, processed=3), world=2)
    assert err == "scored 3 of 4 files into out/scores.tsv on 2 processes in 0.5 s (6.0 files/s)\n"
    err = printed_summary(capsys, summary(scored=0, seconds=0.0, processed=0))
    assert err == "scored 0 of 4 files into out/scores.tsv in 0.0 s (0.0 files/s)\n"


@pytest.mark.parametrize(
    ("official", "note"), [(False, "(no verdict)"), (True, "(no verdict, left out of the score file)")]
)
def test_summary_counts_near_silent_files(capsys, official, note):
    err = printed_summary(capsys, summary(scored=2, silent=2, seconds=1.0, processed=4), official=official)
    assert err == f"scored 2 of 4 files into out/scores.tsv in 1.0 s (4.0 files/s); 2 near-silent {note}\n"


@pytest.mark.parametrize("count", [1, 5, 6, 8])
def test_summary_lists_the_first_five_unreadable_files_and_counts_the_rest(capsys, count):
    errors = [(f"clip_{i}.wav", f"reason {i}") for i in range(count)]
    lines = printed_summary(capsys, summary(errors=errors)).splitlines()
    assert lines[1] == f"{count} files could not be read (listed in out/scores.tsv.errors.tsv):"
    assert lines[2:7] == [f"  clip_{i}.wav: reason {i}" for i in range(min(count, 5))]
    assert lines[2 + min(count, 5) :] == ([f"  ... and {count - 5} more"] if count > 5 else [])
