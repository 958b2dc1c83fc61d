"""Scoring on many processes: files split deterministically, one shard per process, one merged output equal to a
1-process run's, `--resume` per shard after a kill -9 (nothing scored twice or lost), whatever the process count.

The fast tests drive the split and merge logic directly and through a 1-process resume of shards that a killed
2-process run left; the slow ones launch 2 real CPU processes with `accelerate launch --multi_gpu` (on CPU,
`--cpu --num_processes 2` starts ONE process: see shared/notes/install_probe.md)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from score_fixtures import OFFICIAL_HEADER, TSV_HEADER, read_table, save_cli_model, write_tone

from training.score_cli import main


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_cli_model(tmp_path_factory.mktemp("shard_model") / "model")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """11 clips (an odd count: the shards differ in size), one unreadable."""
    root = tmp_path_factory.mktemp("shard_audio")
    for index in range(10):
        write_tone(root / f"clip_{index:02d}.wav", 0.5 + 0.15 * (index % 4), seed=index)
    (root / "clip_05_broken.wav").write_bytes(b"RIFF this is not audio")
    return root


@pytest.fixture(scope="module")
def one_process(model_dir, folder, tmp_path_factory) -> dict[str, Path]:
    """The 1-process reference, in both formats."""
    out = tmp_path_factory.mktemp("reference")
    tables = {"tsv": out / "scores.tsv", "official": out / "official.tsv"}
    assert main([str(folder), "--model", str(model_dir), "--output", str(tables["tsv"])]) == 1
    assert main([str(folder), "--model", str(model_dir), "--output", str(tables["official"]), "--official"]) == 1
    return tables


def assert_same_rows(rows, expected):
    """Same files in the same order with the same verdicts; scores equal up to float32 batching order."""
    assert [row[0] for row in rows] == [row[0] for row in expected]
    for row, want in zip(rows, expected, strict=True):
        assert len(row) == len(want)
        numbers = 2 if len(row) > 2 else 1  # score and p_bonafide in the TSV; cm-score in the official file
        assert [float(v) for v in row[1 : 1 + numbers]] == pytest.approx([float(v) for v in want[1 : 1 + numbers]],
                                                                         abs=2e-6)  # fmt: skip
        assert row[1 + numbers :] == want[1 + numbers :]


def complete_rows(path: Path) -> int:
    """Data rows that a killed process finished writing (a torn last line does not count)."""
    return len(path.read_text(encoding="utf-8").split("\n")[1:-1]) if path.exists() else 0


# ----- the split and the merge, without launching ------------------------------------------------------------------


def test_files_are_split_by_rank_stride_into_a_partition():
    from training.scoring.shard_files import split_files

    files = [Path(f"f{i}") for i in range(11)]
    shards = [split_files(files, rank, 3) for rank in range(3)]
    assert shards[0] == [Path("f0"), Path("f3"), Path("f6"), Path("f9")]
    assert sorted(p for shard in shards for p in shard) == sorted(files)
    assert split_files(files, 0, 1) == files
    with pytest.raises(ValueError, match="rank"):
        split_files(files, 3, 3)


def test_merge_keeps_one_row_per_key_in_input_order_and_drops_torn_lines(tmp_path):
    from training.scoring.shard_files import merge_tables, shard_path
    from training.scoring.table_format import TSV_COLUMNS

    output = tmp_path / "scores.tsv"
    row = "{}\t1.000000\t0.731059\tbonafide\t1.000\t\t\tlayer_0:0+1\n".format
    output.write_text(TSV_HEADER + "\n" + row("old_only") + row("c"))  # a previous run's result
    shard_path(output, 0, 2).write_text(TSV_HEADER + "\n" + row("a") + row("c"))
    shard_path(output, 1, 2).write_text(TSV_HEADER + "\n" + row("b") + row("d")[:9])  # d torn by a kill
    shard_path(output, 2, 3).write_text(TSV_HEADER + "\n" + row("e"))  # left by an older 3-process run
    assert merge_tables(output, TSV_COLUMNS, ["a", "b", "c", "d", "e"]) == 5
    keys = [fields[0] for fields in read_table(output, TSV_HEADER)]
    assert keys == ["a", "b", "c", "e", "old_only"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.tsv"]  # shards merged and removed


def test_merge_refuses_a_shard_of_another_format_and_leaves_everything(tmp_path):
    from training.scoring.shard_files import merge_tables, shard_path
    from training.scoring.table_format import TSV_COLUMNS

    output = tmp_path / "scores.tsv"
    shard_path(output, 0, 2).write_text(OFFICIAL_HEADER + "\nE_1\t0.5\n")
    with pytest.raises(ValueError, match="shard-0-of-2"):
        merge_tables(output, TSV_COLUMNS, ["E_1"])
    assert shard_path(output, 0, 2).read_text() == OFFICIAL_HEADER + "\nE_1\t0.5\n" and not output.exists()


def test_the_main_process_stops_waiting_for_a_process_that_died_without_finishing(tmp_path):
    from training.scoring import ScoringError
    from training.scoring.processes import write_progress
    from training.scoring.scoring_run import _wait_for
    from training.scoring.shard_files import progress_path

    output = tmp_path / "scores.tsv"
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_progress(progress_path(output, 1, 2), state="running", todo=5, processed=2)
    progress = json.loads(progress_path(output, 1, 2).read_text())
    progress["pid"] = int(child.stdout)  # the progress of a process that has exited (as after kill -9)
    progress_path(output, 1, 2).write_text(json.dumps(progress))
    with pytest.raises(ScoringError, match="ended before finishing"):
        _wait_for(output, 1, 2, refresh=lambda: None)
    write_progress(progress_path(output, 1, 2), state="done", todo=5, processed=5, scored=5, silent=0, unreadable=0)
    assert _wait_for(output, 1, 2, refresh=lambda: None)["processed"] == 5


@pytest.mark.parametrize("form", ["tsv", "official"])
def test_one_process_resumes_the_shards_a_killed_two_process_run_left(model_dir, folder, one_process, tmp_path,
                                                                      capsys, form):  # fmt: skip
    from training.scoring.shard_files import shard_path

    header = TSV_HEADER if form == "tsv" else OFFICIAL_HEADER
    reference = read_table(one_process[form], header)
    output = tmp_path / "scores.tsv"
    # What kill -9 leaves: each shard has a header and some rows of its rank's files (rank-strided), rank 1 a torn
    # last line, and there is no merged output yet.
    lines = ["\t".join(row) + "\n" for row in reference]
    shard_path(output, 0, 2).write_text(header + "\n" + "".join(lines[0:4:2]))
    shard_path(output, 1, 2).write_text(header + "\n" + lines[1] + lines[3][:5])
    (tmp_path / ".scores.tsv.4242.tmp").write_text(header + "\n")  # a merge killed before its rename
    extra = ["--official"] if form == "official" else []
    capsys.readouterr()
    assert main([str(folder), "--model", str(model_dir), "--output", str(output), "--resume", *extra]) == 1
    assert f"scored {len(reference) - 3} of 11 files" in capsys.readouterr().err  # 3 rows kept, none twice
    assert_same_rows(read_table(output, header), reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.tsv", "scores.tsv.errors.tsv", "scores.tsv.lock"]


# ----- two real processes ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_two(model_dir: Path, folder: Path, output: Path, *extra: str) -> subprocess.Popen:
    """`accelerate launch` 2 CPU processes of `-m training.score_cli`, from the repository root."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(free_port()), "-m", "training.score_cli", str(folder), "--model", str(model_dir), "--output",
               str(output), "--device", "cpu", *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=240)
    return process.returncode, err


@pytest.mark.slow
@pytest.mark.parametrize("form", ["tsv", "official"])
def test_two_processes_give_the_rows_of_one(model_dir, folder, one_process, tmp_path, form):
    output = tmp_path / "scores.tsv"
    code, err = finish(launch_two(model_dir, folder, output, *(["--official"] if form == "official" else [])))
    assert code != 0 and "scored 10 of 11 files" in err and "on 2 processes" in err, err[-3000:]
    header = TSV_HEADER if form == "tsv" else OFFICIAL_HEADER
    assert_same_rows(read_table(output, header), read_table(one_process[form], header))
    errors = (tmp_path / "scores.tsv.errors.tsv").read_text().split("\n")
    assert len(errors) == 3 and errors[1].split("\t")[0].endswith("clip_05_broken.wav")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.tsv", "scores.tsv.errors.tsv", "scores.tsv.lock"]


def progress_of(output: Path, rank: int) -> dict | None:
    try:
        return json.loads(Path(f"{output}.progress-{rank}-of-2.json").read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.slow
@pytest.mark.parametrize("victim", [0, 1])
def test_kill_9_of_either_process_then_resume_loses_nothing_and_scores_nothing_twice(model_dir, tmp_path_factory,
                                                                                     tmp_path, victim):  # fmt: skip
    folder = tmp_path_factory.mktemp("many")
    for index in range(60):
        write_tone(folder / f"clip_{index:02d}.wav", 2.0, seed=index % 7)
    reference = tmp_path / "reference.tsv"
    assert main([str(folder), "--model", str(model_dir), "--output", str(reference), "--batch_size", "2"]) == 0
    output = tmp_path / "out" / "scores.tsv"
    process = launch_two(model_dir, folder, output, "--batch_size", "2")
    shard = Path(f"{output}.shard-{victim}-of-2")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        progress = progress_of(output, victim)
        if progress and 2 <= progress["processed"] < progress["todo"] - 5 and shard.is_file():
            os.kill(progress["pid"], signal.SIGKILL)
            break
        time.sleep(0.01)
    else:
        pytest.fail(f"process {victim} finished or never started before it could be killed: {finish(process)}")
    code, err = finish(process)
    assert code != 0 and not output.exists()
    kept = sum(complete_rows(Path(f"{output}.shard-{rank}-of-2")) for rank in (0, 1))
    assert 2 <= kept < 60
    code, err = finish(launch_two(model_dir, folder, output, "--batch_size", "2", "--resume"))
    assert code == 0, err[-3000:]
    assert f"scored {60 - kept} of 60 files" in err
    assert_same_rows(read_table(output, TSV_HEADER), read_table(reference, TSV_HEADER))
    assert sorted(p.name for p in output.parent.iterdir()) == ["scores.tsv", "scores.tsv.lock"]
