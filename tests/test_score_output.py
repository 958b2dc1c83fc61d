"""`molex-score` output files that tell the truth: the documented columns in their order, the official score file
with the model's sign, one row per file whatever its name (TAB, CR, LF, non-UTF-8), `--resume` for both formats, one
run per output at a time, a fresh errors file per run, clear errors for an unwritable output, a full disk and a missing
device, `--max_seconds` on by default, and groups of windows rather than of files."""

import errno
import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from score_fixtures import (
    ERRORS_HEADER,
    OFFICIAL_HEADER,
    TSV_HEADER,
    read_table,
    save_cli_model,
    tone,
    unescape_path,
    write_tone,
)

import training.score_cli as score_cli
from modeling_molex import MoLExForAudioClassification
from training.score_cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_cli_model(tmp_path_factory.mktemp("output_model") / "model")


@pytest.fixture(scope="module")
def reference(model_dir):
    """The model's own score_file, the number every row must carry."""
    model = MoLExForAudioClassification.from_pretrained(model_dir).eval()
    return model.score_file


@pytest.fixture
def clean_folder(tmp_path) -> Path:
    folder = tmp_path / "clips"
    folder.mkdir()
    for index, seconds in enumerate((0.9, 0.6, 1.4, 0.5)):
        write_tone(folder / f"clip_{index}.wav", seconds, seed=index)
    return folder


def arguments(model_dir, output, *paths, extra=()):
    return [*map(str, paths), "--model", str(model_dir), "--output", str(output), *extra]


# ----- the columns and the sign ------------------------------------------------------------------------------------


def test_tsv_columns_are_the_documented_ones_in_their_order(model_dir, clean_folder, reference, tmp_path):
    output = tmp_path / "scores.tsv"
    assert main(arguments(model_dir, output, clean_folder)) == 0
    rows = read_table(output, TSV_HEADER)
    assert len(rows) == 4
    for path, score, p_bonafide, verdict, duration_s, novelty, nearest, top_experts in rows:
        expected = reference(path)
        assert float(score) == pytest.approx(expected.score, abs=2e-6)
        assert float(p_bonafide) == pytest.approx(expected.bonafide_probability, abs=2e-6)
        assert verdict == expected.verdict
        assert float(duration_s) == pytest.approx(expected.duration, abs=1e-3)
        assert novelty == "" and nearest == ""  # this model ships no routing signatures
        assert top_experts.split()[0].startswith("layer_0:") and top_experts.split()[1].startswith("layer_1:")


def test_official_score_file_carries_the_models_score_with_its_sign(model_dir, clean_folder, reference, tmp_path):
    output = tmp_path / "official.tsv"
    assert main(arguments(model_dir, output, clean_folder, extra=["--official"])) == 0
    rows = read_table(output, OFFICIAL_HEADER)
    assert [name for name, _ in rows] == [f"clip_{i}" for i in range(4)]
    scores = {name: float(value) for name, value in rows}
    expected = {name: reference(clean_folder / f"{name}.wav").score for name in scores}
    assert min(abs(value) for value in expected.values()) > 0.01  # a negated file could not pass
    assert scores == pytest.approx(expected, abs=2e-6)


# ----- file names --------------------------------------------------------------------------------------------------

AWKWARD_NAMES = [
    b"tab\there.wav",
    b"line\nfeed.wav",
    b"carriage\rreturn.wav",
    b"back\\slash \\t not a tab.wav",
    b"latin1 caf\xe9.wav",  # not UTF-8
    "unicode café 日本.wav".encode(),
    "line\u2028separator.wav".encode(),
    b"plain.wav",
]


@pytest.fixture
def awkward_folder(tmp_path) -> Path:
    folder = tmp_path / "awkward"
    folder.mkdir()
    for index, name in enumerate(AWKWARD_NAMES):
        write_tone(os.fsencode(folder) + b"/" + name, 0.5 + 0.1 * index, seed=index)
    return folder


def test_every_file_name_gets_exactly_one_row_and_resume_adds_none(model_dir, awkward_folder, reference, tmp_path,
                                                                    capsys):  # fmt: skip
    output = tmp_path / "scores.tsv"
    assert main(arguments(model_dir, output, awkward_folder)) == 0
    rows = read_table(output, TSV_HEADER)
    names = sorted(unescape_path(row[0]).rsplit(b"/", 1)[1] for row in rows)
    assert names == sorted(AWKWARD_NAMES)
    for row in rows:
        assert len(row) == 8
        expected = reference(os.fsdecode(unescape_path(row[0])))
        assert float(row[1]) == pytest.approx(expected.score, abs=2e-6)
    before = output.read_bytes()
    capsys.readouterr()
    assert main(arguments(model_dir, output, awkward_folder, extra=["--resume"])) == 0
    assert f"scored 0 of {len(AWKWARD_NAMES)} files" in capsys.readouterr().err
    assert output.read_bytes() == before

    lines = before.split(b"\n")  # header, 8 rows, ""
    torn = b"\n".join(lines[:-4]) + b"\n" + lines[-4][:7]  # 5 rows kept, the 6th torn, the last two lost
    output.write_bytes(torn)
    assert main(arguments(model_dir, output, awkward_folder, extra=["--resume"])) == 0
    assert f"scored 3 of {len(AWKWARD_NAMES)} files" in capsys.readouterr().err
    resumed = read_table(output, TSV_HEADER)
    assert sorted(row[0] for row in resumed) == sorted(row[0] for row in rows)


def test_official_format_refuses_names_it_cannot_write_into_the_errors_file(model_dir, awkward_folder, tmp_path):
    output = tmp_path / "official.tsv"
    assert main(arguments(model_dir, output, awkward_folder, extra=["--official"])) == 1
    written = {name for name, _ in read_table(output, OFFICIAL_HEADER)}
    assert written == {"back\\slash \\t not a tab", "unicode café 日本", "plain"}
    errors = read_table(Path(f"{output}.errors.tsv"), ERRORS_HEADER)
    refused = sorted(unescape_path(path).rsplit(b"/", 1)[1] for path, _ in errors)
    assert refused == sorted(set(AWKWARD_NAMES) - {b"back\\slash \\t not a tab.wav", "unicode café 日本.wav".encode(),
                                                   b"plain.wav"})  # fmt: skip
    assert all("trial name" in reason for _, reason in errors)


def test_resume_of_the_official_format_scores_only_what_is_missing(model_dir, clean_folder, tmp_path, capsys):
    output = tmp_path / "official.tsv"
    assert main(arguments(model_dir, output, clean_folder, extra=["--official"])) == 0
    full = output.read_text()
    output.write_text("\n".join(full.split("\n")[:3]) + "\n")  # header + 2 of 4 rows
    capsys.readouterr()
    assert main(arguments(model_dir, output, clean_folder, extra=["--official", "--resume"])) == 0
    assert "scored 2 of 4 files" in capsys.readouterr().err
    resumed = read_table(output, OFFICIAL_HEADER)
    expected = [line.split("\t") for line in full[:-1].split("\n")[1:]]
    assert [name for name, _ in resumed] == [name for name, _ in expected]
    assert [float(value) for _, value in resumed] == pytest.approx([float(value) for _, value in expected], abs=2e-6)


# ----- one run per output, fresh errors ----------------------------------------------------------------------------


def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(model_dir, clean_folder, tmp_path,
                                                                         monkeypatch, capsys):  # fmt: skip
    output = tmp_path / "scores.tsv"
    first_is_scoring, release = threading.Event(), threading.Event()
    from training.scoring import score_loop

    real_read = score_loop.decode_audio

    def slow_read(path, max_seconds):
        first_is_scoring.set()
        assert release.wait(60)
        return real_read(path, max_seconds=max_seconds)

    results = {}
    monkeypatch.setattr(score_loop, "decode_audio", slow_read)
    first = threading.Thread(target=lambda: results.setdefault("first", main(arguments(model_dir, output,
                                                                                       clean_folder))))  # fmt: skip
    first.start()
    try:
        assert first_is_scoring.wait(60)
        assert main(arguments(model_dir, output, clean_folder, extra=["--resume"])) == 2
        assert "another molex-score run" in capsys.readouterr().err
    finally:
        release.set()
        first.join(60)
    assert results["first"] == 0
    assert len(read_table(output, TSV_HEADER)) == 4  # the first run's rows, none twice


def test_each_run_starts_a_fresh_errors_file(model_dir, clean_folder, tmp_path):
    output = tmp_path / "scores.tsv"
    errors = Path(f"{output}.errors.tsv")
    broken = clean_folder / "broken.wav"
    broken.write_bytes(b"RIFF not really audio")
    assert main(arguments(model_dir, output, clean_folder)) == 1
    assert [Path(path).name for path, _ in read_table(errors, ERRORS_HEADER)] == ["broken.wav"]
    sf.write(broken, tone(0.5, 16_000, 7), 16_000)  # the user repairs the file and resumes
    assert main(arguments(model_dir, output, clean_folder, extra=["--resume"])) == 0
    assert not errors.exists()
    assert len(read_table(output, TSV_HEADER)) == 5


# ----- clear errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["folder is a file", "/proc"])
def test_an_unwritable_output_is_a_clear_error(model_dir, clean_folder, tmp_path, capsys, where):
    if where == "folder is a file":
        (tmp_path / "not_a_folder").write_text("x")
        output = tmp_path / "not_a_folder" / "scores.tsv"
    else:
        output = Path("/proc/molex-test/scores.tsv")  # nobody, root included, can create files there
    assert main(arguments(model_dir, output, clean_folder)) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and str(output.parent) in err and "Traceback" not in err


def test_a_full_disk_is_a_clear_error(model_dir, clean_folder, tmp_path, capsys):
    if not os.path.exists("/dev/full"):
        pytest.skip("this system has no /dev/full")
    output = tmp_path / "scores.tsv"
    output.symlink_to("/dev/full")  # every write to it fails with ENOSPC
    assert main(arguments(model_dir, output, clean_folder)) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(output) in err


class FillsUp(io.TextIOWrapper):
    """A table file on a disk that fills up after `room` more characters."""

    room = 0

    def write(self, text):
        FillsUp.room -= len(text)
        if FillsUp.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(text)


def test_a_disk_that_fills_up_mid_run_keeps_the_rows_and_resume_completes(model_dir, clean_folder, tmp_path,
                                                                          monkeypatch, capsys):  # fmt: skip
    reference = tmp_path / "reference.tsv"
    assert main(arguments(model_dir, reference, clean_folder, extra=["--batch_size", "1"])) == 0
    output = tmp_path / "scores.tsv"
    from training.scoring import score_loop

    real_open = score_loop.open_table_for_append
    header, *rows = reference.read_text().split("\n")
    FillsUp.room = len(header) + len(rows[0]) + len(rows[1]) + 5  # room for two rows (and the header) only

    def filling_open(path):
        handle = real_open(path)
        return FillsUp(handle.detach(), encoding="utf-8", newline="")

    monkeypatch.setattr(score_loop, "open_table_for_append", filling_open)
    capsys.readouterr()
    assert main(arguments(model_dir, output, clean_folder, extra=["--batch_size", "1"])) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "--resume" in err and "Traceback" not in err
    assert len(read_table(output, TSV_HEADER)) == 2  # the rows written before the disk filled up are kept
    monkeypatch.undo()
    assert main(arguments(model_dir, output, clean_folder, extra=["--batch_size", "1", "--resume"])) == 0
    assert read_table(output, TSV_HEADER) == read_table(reference, TSV_HEADER)


def test_a_cuda_device_without_cuda_is_a_clear_usage_error(model_dir, clean_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stopped:
        main(arguments(model_dir, tmp_path / "scores.tsv", clean_folder, extra=["--device", "cuda:0"]))
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "--device cuda:0" in err and "CUDA is not available" in err
    assert not (tmp_path / "scores.tsv").exists()


# ----- bounded work per file and per batch --------------------------------------------------------------------------


def test_max_seconds_is_on_by_default_and_says_so(model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "default: 600" in " ".join(capsys.readouterr().out.split())
    long_file = tmp_path / "eleven_minutes.wav"
    sf.write(long_file, np.zeros(601 * 8_000, dtype=np.int16), 8_000)  # 9.6 MB, refused before decoding
    short = tmp_path / "short.wav"
    write_tone(short, 0.5, seed=1)
    output = tmp_path / "scores.tsv"
    assert main(arguments(model_dir, output, long_file, short)) == 1
    [(path, reason)] = read_table(Path(f"{output}.errors.tsv"), ERRORS_HEADER)
    assert Path(path).name == "eleven_minutes.wav" and "601.0 s" in reason and "600 s" in reason
    assert [Path(row[0]).name for row in read_table(output, TSV_HEADER)] == ["short.wav"]


def test_max_seconds_option_bounds_each_file(model_dir, tmp_path):
    for name, seconds in (("one.wav", 1.0), ("three.wav", 3.0)):
        write_tone(tmp_path / name, seconds, seed=2)
    output = tmp_path / "scores.tsv"
    assert main(arguments(model_dir, output, tmp_path / "one.wav", tmp_path / "three.wav",
                          extra=["--max_seconds", "2"])) == 1  # fmt: skip
    [(path, reason)] = read_table(Path(f"{output}.errors.tsv"), ERRORS_HEADER)
    assert Path(path).name == "three.wav" and "3.0 s" in reason and "2 s" in reason
    assert main(arguments(model_dir, output, tmp_path / "three.wav", extra=["--max_seconds", "0"])) == 0  # 0: off
    for bad in ("-1", "nan", "inf", "ten"):
        with pytest.raises(SystemExit):
            main(arguments(model_dir, output, tmp_path / "one.wav", extra=["--max_seconds", bad]))


def test_max_seconds_reaches_a_decoder_that_takes_it(model_dir, tmp_path, monkeypatch):
    write_tone(tmp_path / "a.wav", 0.5, seed=1)
    seen = []

    def decoder(path, max_seconds=None):
        seen.append(max_seconds)
        return sf.read(path, dtype="float32", always_2d=True)[0].T, 16_000

    monkeypatch.setattr("training.scoring.score_loop.decode_audio", decoder)
    assert main(arguments(model_dir, tmp_path / "o.tsv", tmp_path / "a.wav", extra=["--max_seconds", "42"])) == 0
    assert seen == [42.0]


def test_a_group_holds_windows_not_files(model_dir, tmp_path, monkeypatch):
    """One long file is scored without short files piled onto it, and short files still share forward passes."""
    crop, hop = 8_000, 4_000  # the model's window and the default hop (half a window), at 16 kHz
    paths = []
    for index, seconds in enumerate((2.0, 2.0, 2.0, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4)):
        paths.append(tmp_path / f"{index}.wav")
        write_tone(paths[-1], seconds, seed=index)
    calls = []
    real_load = score_cli.AutoModelForAudioClassification.from_pretrained

    def recording_load(*args, **kwargs):
        model = real_load(*args, **kwargs)
        real_score = model.score_waveforms

        def score_waveforms(waves, rates, **options):
            counts = [max(1, -(-(np.shape(w)[-1] - crop) // hop) + 1) for w in waves]
            calls.append(counts)
            return real_score(waves, rates, **options)

        model.score_waveforms = score_waveforms
        return model

    monkeypatch.setattr(score_cli.AutoModelForAudioClassification, "from_pretrained", recording_load)
    assert main(arguments(model_dir, tmp_path / "o.tsv", *paths, extra=["--batch_size", "3"])) == 0
    assert sum(len(call) for call in calls) == 9
    assert all(sum(call) - call[-1] < 3 for call in calls)  # a group closes once it holds a batch of windows
    assert any(len(call) == 3 for call in calls)  # short files are still batched together


def test_running_out_of_memory_on_one_file_refuses_that_file_and_goes_on(model_dir, tmp_path, monkeypatch):
    """Issue 19: one batch of long files ended `molex-score` in MemoryError with 0 rows written."""
    for name in ("a.wav", "huge.wav", "b.wav"):
        write_tone(tmp_path / name, 0.6, seed=len(name))
    real_load = score_cli.AutoModelForAudioClassification.from_pretrained

    def load_with_little_memory(*args, **kwargs):
        model = real_load(*args, **kwargs)
        real_score = model.score_waveforms

        def score_waveforms(waves, rates, names=None, **options):
            if "huge.wav" in (names or []):
                raise MemoryError
            return real_score(waves, rates, names=names, **options)

        model.score_waveforms = score_waveforms
        return model

    monkeypatch.setattr(score_cli.AutoModelForAudioClassification, "from_pretrained", load_with_little_memory)
    output = tmp_path / "o.tsv"
    paths = [tmp_path / name for name in ("a.wav", "huge.wav", "b.wav")]
    assert main(arguments(model_dir, output, *paths, extra=["--batch_size", "64"])) == 1
    assert [Path(row[0]).name for row in read_table(output, TSV_HEADER)] == ["a.wav", "b.wav"]
    [(path, reason)] = read_table(Path(f"{output}.errors.tsv"), ERRORS_HEADER)
    assert Path(path).name == "huge.wav" and reason.startswith("huge.wav: scoring it needs more memory than is free")
