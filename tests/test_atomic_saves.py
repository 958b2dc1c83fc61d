"""A saved folder is one save, whole (issue 19, item 4): files of two saves mixed in one folder are refused at load,
naming the files; kill -9 at any point of `save_pretrained` / `save_experts` leaves the previous save loadable and
unchanged (or, after the swap, the new one); push staging copies only files that are inside the model folder."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import random_audio, randomize_experts, tiny_backbone_config

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification
from modeling_molex.hub_upload import PushError, upload_folder_in_one_commit
from training import push_to_hub


ROOT = Path(__file__).resolve().parents[1]


def build(seed: int, calibration: dict | None = None) -> MoLExForAudioClassification:
    torch.manual_seed(seed)
    adapter = MoLExAdapterConfig(num_experts=3, top_k=2, r=4)
    config = MoLExConfig(backbone_config=tiny_backbone_config("wav2vec2"), adapter=adapter, calibration=calibration)
    model = MoLExForAudioClassification(config).eval()
    randomize_experts(model, seed=seed)
    return model


def score(folder) -> float:
    model = MoLExForAudioClassification.from_pretrained(folder).eval()
    return model.score_waveform(random_audio(1, 4000, seed=3)[0].numpy(), 16_000).score


@pytest.mark.parametrize(
    "copied",
    ["model.safetensors", "config.json", "experts/router.safetensors", "experts/expert_1/adapter_model.safetensors"],
)
def test_a_file_of_another_save_is_refused_at_load_naming_the_files(tmp_path, copied):
    """Same architecture, other weights or only another calibration: the shapes fit, so only the save id tells."""
    build(0).save_pretrained(tmp_path / "a")
    other = build(0, calibration={"scale": 2.0, "bias": -1.0}) if copied == "config.json" else build(1)
    other.save_pretrained(tmp_path / "b")
    shutil.copyfile(tmp_path / "b" / copied, tmp_path / "a" / copied)
    with pytest.raises(ValueError) as error:
        MoLExForAudioClassification.from_pretrained(tmp_path / "a")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'a'}: its files come from different saves (")
    assert "config.json: " in message and "model.safetensors: " in message and f"{copied}: " in message


def test_two_saves_of_one_model_are_the_same_bytes_so_mixing_them_is_harmless(tmp_path):
    model = build(0)
    model.save_pretrained(tmp_path / "a")
    model.save_pretrained(tmp_path / "b")
    for name in ("config.json", "model.safetensors", "experts/index.json", "experts/router.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    shutil.copyfile(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    assert score(tmp_path / "a") == score(tmp_path / "b")


def test_a_folder_interrupted_between_the_two_renames_points_to_the_previous_version(tmp_path, monkeypatch):
    """Where folders cannot be exchanged in one step the previous version is renamed aside first: a crash right
    after that leaves no folder, and loading says where the complete previous version is."""
    import modeling_molex.atomic_saves as atomic_saves

    build(0).save_pretrained(tmp_path / "model")
    expected = score(tmp_path / "model")
    monkeypatch.setattr(atomic_saves, "exchange_directories", lambda first, second: False)
    rename = os.rename

    def rename_then_crash(source, destination):
        if os.fspath(destination) == str(tmp_path / "model"):  # the previous version was moved aside just before
            raise OSError("power cut")
        rename(source, destination)

    monkeypatch.setattr(atomic_saves.os, "rename", rename_then_crash)
    with pytest.raises(OSError, match="power cut"):
        build(1).save_pretrained(tmp_path / "model")
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError) as error:
        MoLExForAudioClassification.from_pretrained(tmp_path / "model")
    previous = Path(str(error.value).split(" is complete in ")[1].split(": rename it back")[0])
    assert previous.parent == tmp_path and previous.name.startswith(".model.molex-previous-")
    previous.rename(tmp_path / "model")
    assert score(tmp_path / "model") == expected


KILLER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {tests!r})
    import torch
    from conftest import randomize_experts
    import modeling_molex.atomic_saves as atomic_saves
    import modeling_molex.model_folder as model_folder
    import modeling_molex.experts_io as experts_io
    from modeling_molex import MoLExForAudioClassification

    folder, what, point = sys.argv[1], sys.argv[2], sys.argv[3]
    model = MoLExForAudioClassification.from_pretrained(folder if what == "model" else sys.argv[4]).eval()
    randomize_experts(model, seed=5)
    model.config.calibration = {{"scale": 3.0, "bias": 1.0}}

    def stop():  # tell the test where we are, then wait to be killed
        print("READY", flush=True)
        time.sleep(120)
        os._exit(3)

    def after(module, name):
        original = getattr(module, name)
        def wrapper(*args, **kwargs):
            result = original(*args, **kwargs)
            stop()
        setattr(module, name, wrapper)

    def before(module, name):
        setattr(module, name, lambda *args, **kwargs: stop())

    if point == "weights written":
        after(model_folder, "stamp_model_weights")
    elif point == "pack written":
        after(model_folder, "save_expert_pack")
    elif point == "before the swap":
        before(model_folder if what == "model" else experts_io, "swap_into_place")
    elif point == "after the swap":
        after(model_folder if what == "model" else experts_io, "swap_into_place")
    if what == "model":
        model.save_pretrained(folder)
    else:
        model.save_experts(folder, names=["domain"])
    os._exit(4)
    """
)


def kill_during_save(tmp_path, folder, what: str, point: str, model_folder=None) -> None:
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(root=str(ROOT), tests=str(ROOT / "tests")))
    args = [sys.executable, str(script), str(folder), what, point, *([str(model_folder)] if model_folder else [])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        line = process.stdout.readline()
        assert line == "READY\n", process.stderr.read()
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.slow
@pytest.mark.parametrize("point", ["weights written", "pack written", "before the swap", "after the swap"])
def test_kill_9_during_save_pretrained_leaves_the_previous_save_or_the_new_one(tmp_path, point):
    folder = tmp_path / "model"
    build(0).save_pretrained(folder)
    (folder / "results.json").write_text("{}")  # a file the user keeps beside the model
    before = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    old_score = score(folder)
    kill_during_save(tmp_path, folder, "model", point)
    after = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    if point == "after the swap":
        assert after.keys() == before.keys() and after != before
        assert MoLExForAudioClassification.from_pretrained(folder).config.calibration == {"scale": 3.0, "bias": 1.0}
        assert score(folder) != old_score
    else:
        assert after == before  # not one byte of the previous save changed
        assert score(folder) == old_score


@pytest.mark.slow
@pytest.mark.parametrize("point", ["before the swap", "after the swap"])
def test_kill_9_during_save_experts_leaves_a_whole_pack(tmp_path, point):
    model = build(0)
    model.add_experts(2, pack_name="domain")
    randomize_experts(model, seed=1)
    model.save_pretrained(tmp_path / "model")
    pack = tmp_path / "pack"
    model.save_experts(pack, names=["domain"])
    before = {p.relative_to(pack).as_posix(): p.read_bytes() for p in pack.rglob("*") if p.is_file()}
    kill_during_save(tmp_path, pack, "pack", point, model_folder=tmp_path / "model")
    after = {p.relative_to(pack).as_posix(): p.read_bytes() for p in pack.rglob("*") if p.is_file()}
    assert (after == before) == (point == "before the swap")
    assert build(2).load_experts(pack) == ["domain"]


@pytest.fixture
def model_with_a_token_beside_it(tmp_path):
    secret = tmp_path / "hf_home" / "token"
    secret.parent.mkdir()
    secret.write_text("hf_secret_token")
    folder = tmp_path / "model"
    build(0).save_pretrained(folder)
    return folder, secret


@pytest.mark.parametrize("link", ["token", "experts/expert_0/notes.txt", "experts/expert_1"])
def test_staging_refuses_a_link_out_of_the_model_folder(model_with_a_token_beside_it, tmp_path, link):
    folder, secret = model_with_a_token_beside_it
    target = secret if link != "experts/expert_1" else secret.parent
    if link == "experts/expert_1":
        shutil.rmtree(folder / link)
    os.symlink(target, folder / link)
    with pytest.raises(PushError) as error:
        push_to_hub.stage_to_folder(folder, tmp_path / "staged", "me/molex", False, None)
    assert f"{folder / link} is a symbolic link" in str(error.value)
    assert not (tmp_path / "staged").exists()
    copies = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink() and p != secret]
    assert not any("hf_secret_token" in p.read_text(errors="replace") for p in copies)


def test_staging_copies_a_fifo_never_and_does_not_hang(model_with_a_token_beside_it, tmp_path):
    folder, _ = model_with_a_token_beside_it
    os.mkfifo(folder / "pipe")
    with pytest.raises(PushError, match=r"pipe is a FIFO \(named pipe\)"):
        push_to_hub.stage_to_folder(folder, tmp_path / "staged", "me/molex", False, None)


def test_the_uploader_refuses_a_folder_holding_a_link(model_with_a_token_beside_it, monkeypatch):
    folder, secret = model_with_a_token_beside_it
    os.symlink(secret, folder / "token")
    monkeypatch.setattr("modeling_molex.hub_upload.HfApi", lambda **kwargs: pytest.fail("no request may be sent"))
    with pytest.raises(PushError, match=f"{folder / 'token'} is a symbolic link"):
        upload_folder_in_one_commit(folder, "me/molex")


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_fifo_in_a_model_folder_is_refused_without_hanging_the_load(tmp_path, name):
    from test_expert_pack_safety import fifo_watchdog

    build(0).save_pretrained(tmp_path / "model")
    (tmp_path / "model" / name).unlink()
    os.mkfifo(tmp_path / "model" / name)
    with fifo_watchdog([tmp_path / "model" / name]), pytest.raises(ValueError) as error:
        MoLExForAudioClassification.from_pretrained(tmp_path / "model")
    assert str(error.value).startswith(f"{tmp_path / 'model' / name} is a FIFO (named pipe), not a regular file")


@pytest.mark.parametrize("name", ["config.json", "preprocessor_config.json"])
def test_a_deeply_nested_model_json_is_refused_naming_the_file(tmp_path, name):
    build(0).save_pretrained(tmp_path / "model")
    path = tmp_path / "model" / name
    path.write_text(path.read_text().rstrip()[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError) as error:
        MoLExForAudioClassification.from_pretrained(tmp_path / "model")
    assert str(error.value) == f"{path}: JSON nested 100001 levels deep, more than the 64 a MoLEx file may use"
