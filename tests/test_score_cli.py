"""`molex-score`: folders, list files, broken and silent files, the official format, --resume; and the one-path
promise: the pipeline, the CLI and the demo give identical numbers for one clip."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_in_fresh_process
from score_fixtures import TSV_HEADER, save_cli_model, tone

from modeling_molex import MoLExForAudioClassification
from training.metrics.score_files import read_score_file
from training.score_cli import main


COLUMNS = TSV_HEADER.split("\t")


SPACE_DIR = Path(__file__).resolve().parent.parent / "space_app"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_cli_model(tmp_path_factory.mktemp("cli_model") / "model")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_audio")
    files = {
        "a": root / "folder" / "a.wav",
        "b": root / "folder" / "sub" / "b.flac",
        "c": root / "listed" / "c.wav",
        "broken": root / "folder" / "broken.wav",
        "nan": root / "folder" / "sub" / "nan.wav",
        "silent": root / "folder" / "silent.wav",
        "webm": root / "folder" / "phone.webm",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(files["a"], tone(1.3, 16_000, 1), 16_000)
    sf.write(files["b"], np.stack([tone(0.7, 22_050, 2), tone(0.7, 22_050, 3)], axis=1), 22_050)
    sf.write(files["c"], tone(0.4, 16_000, 4), 16_000)
    files["broken"].write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage that is not audio")
    sf.write(files["nan"], np.r_[np.zeros(4000), np.nan, np.zeros(4000)].astype(np.float32), 16_000, subtype="FLOAT")
    sf.write(files["silent"], np.zeros(16_000, dtype=np.int16), 16_000)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(files["a"]), "-c:a", "libopus", str(files["webm"])],
                   check=True)  # fmt: skip
    (root / "list.txt").write_text("# files to score\nlisted/c.wav\nmissing.wav\n")
    files["list"] = root / "list.txt"
    return files


def read_rows(path: Path) -> list[dict[str, str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == TSV_HEADER
    return [dict(zip(COLUMNS, line.split("\t"), strict=True)) for line in lines[1:]]


def test_scores_folders_and_lists_reports_unreadable_files_and_never_stops(model_dir, corpus, tmp_path, capsys):
    output = tmp_path / "scores.tsv"
    code = main([str(corpus["a"].parent), str(corpus["list"]), "--model", str(model_dir), "--output", str(output),
                 "--batch_size", "3"])  # fmt: skip
    assert code == 1  # some files could not be read
    rows = {Path(row["path"]).name: row for row in read_rows(output)}
    assert set(rows) == {"a.wav", "b.flac", "c.wav", "silent.wav", "phone.webm"}
    model = MoLExForAudioClassification.from_pretrained(model_dir).eval()
    for name in ("a.wav", "b.flac", "c.wav", "phone.webm"):
        expected = model.score_file(rows[name]["path"])
        assert float(rows[name]["score"]) == pytest.approx(expected.score, abs=2e-6)
        assert float(rows[name]["p_bonafide"]) == pytest.approx(expected.bonafide_probability, abs=2e-6)
        assert rows[name]["verdict"] == expected.verdict
        assert float(rows[name]["duration_s"]) == pytest.approx(expected.duration, abs=1e-3)
        assert len(rows[name]["top_experts"].split()) == 2 and rows[name]["top_experts"].startswith("layer_0:")
    assert rows["silent.wav"]["verdict"] == "near-silent" and rows["silent.wav"]["score"] == ""
    errors = (tmp_path / "scores.tsv.errors.tsv").read_text().splitlines()
    assert errors[0] == "path\terror" and len(errors) == 1 + 3
    assert {Path(line.split("\t")[0]).name for line in errors[1:]} == {"broken.wav", "nan.wav", "missing.wav"}
    assert "NaN or infinite" in next(line for line in errors if "nan.wav" in line)
    err = capsys.readouterr().err
    assert "scored 5 of 8 files" in err and "1 near-silent" in err and "3 files could not be read" in err


def test_official_format_and_resume_after_an_interrupted_run(model_dir, corpus, tmp_path, capsys):
    output = tmp_path / "official.tsv"
    arguments = [str(corpus["a"]), str(corpus["b"]), str(corpus["c"]), str(corpus["silent"]), "--model",
                 str(model_dir), "--output", str(output), "--official"]  # fmt: skip
    assert main(arguments) == 0
    full = read_score_file(output)
    assert list(full) == ["a", "b", "c"]  # near-silent files have no score to give
    lines = output.read_text().splitlines()
    output.write_text("\n".join(lines[:2]) + "\n" + lines[2][:4])  # killed while writing the second row
    capsys.readouterr()
    assert main([*arguments, "--resume"]) == 0
    assert "scored 2 of 4 files" in capsys.readouterr().err  # a was kept; b (torn) and c rescored; silent again
    resumed = read_score_file(output)
    # b and c are rescored in another batch of windows: equal up to float32 summation order and the 6-decimal file
    assert resumed == pytest.approx(full, abs=2e-6) and list(resumed) == ["a", "b", "c"]


def test_usage_errors(model_dir, corpus, tmp_path):
    twin = tmp_path / "other" / "a.flac"
    twin.parent.mkdir()
    sf.write(twin, tone(0.5, 16_000, 9), 16_000)
    with pytest.raises(SystemExit):
        main(
            [str(corpus["a"]), str(twin), "--model", str(model_dir), "--output", str(tmp_path / "o.tsv"), "--official"]
        )  # fmt: skip  (two trials named "a")
    (tmp_path / "foreign.tsv").write_text("id\tvalue\nx\t1\n")
    assert (
        main([str(corpus["a"]), "--model", str(model_dir), "--output", str(tmp_path / "foreign.tsv"), "--resume"]) == 2
    )
    assert (tmp_path / "foreign.tsv").read_text() == "id\tvalue\nx\t1\n"  # a file we did not write is untouched


def test_console_script_is_declared():
    scripts = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    assert scripts["scripts"]["molex-score"] == "training.score_cli:run"


PIPELINE_SCRIPT = """
import json, sys
from transformers import pipeline
classify = pipeline("audio-classification", model=sys.argv[1], trust_remote_code=True)
print(json.dumps({row["label"]: row["score"] for row in classify(sys.argv[2])}))
"""


@pytest.mark.slow
def test_pipeline_cli_and_demo_give_identical_numbers_for_one_clip(model_dir, corpus, tmp_path):
    clip = corpus["b"]  # stereo, 22.05 kHz: channels, resampling and windows all take part
    run = run_in_fresh_process(PIPELINE_SCRIPT, [str(model_dir), str(clip)], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    pipeline_p = json.loads(run.stdout.strip().splitlines()[-1])["bonafide"]

    assert main([str(clip), "--model", str(model_dir), "--output", str(tmp_path / "one.tsv")]) == 0
    cli_p = float(read_rows(tmp_path / "one.tsv")[0]["p_bonafide"])

    sys.path.insert(0, str(SPACE_DIR))
    from detector import Detector

    demo_p = Detector(str(model_dir)).predict(clip).bonafide_probability
    assert 0.0 < demo_p < 1.0
    assert pipeline_p == pytest.approx(demo_p, abs=1e-6)
    assert cli_p == pytest.approx(demo_p, abs=1e-6)
