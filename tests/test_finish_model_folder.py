"""The end of training replaces `output_dir/model` (issue 19, atomic folders): a run stopped while the new folder
goes into place must leave the previous model whole, never an empty or half-removed folder."""

import os

import pytest
import torch

import training.trainer.finish as finish
from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification
from tests.conftest import randomize_experts, tiny_backbone_config
from training.trainer.config import parse_train_config


def tiny_model(seed: int) -> MoLExForAudioClassification:
    torch.manual_seed(seed)
    adapter = MoLExAdapterConfig(num_experts=2, top_k=1, r=2)
    model = MoLExForAudioClassification(MoLExConfig(backbone_config=tiny_backbone_config("wav2vec2"), adapter=adapter))
    randomize_experts(model, seed=seed)
    return model.eval()


class SimulatedKill(BaseException):
    """Stands for kill -9 (BaseException: nothing may swallow it)."""


def _save(model, folder, tmp_path, marker: str) -> None:
    config = parse_train_config(["--data_root", "/x", "--output_dir", str(tmp_path / "run")])
    finish.save_model_folder(model, folder, config, {"marker": marker})


def test_a_stop_at_the_final_rename_leaves_the_previous_model_whole(tmp_path, monkeypatch):
    folder = tmp_path / "run" / "model"
    folder.parent.mkdir()
    _save(tiny_model(seed=0), folder, tmp_path, "first")
    before = {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*") if path.is_file()}

    def killed(*args, **kwargs):
        raise SimulatedKill

    # whatever puts the new folder in place is where the stop lands (os.replace before, swap_into_place now)
    class OsWithAKilledReplace:  # finish.py's own `os` only: save_pretrained's renames stay real
        def __getattr__(self, name):
            return killed if name == "replace" else getattr(os, name)

    monkeypatch.setattr(finish, "os", OsWithAKilledReplace(), raising=False)
    monkeypatch.setattr(finish, "swap_into_place", killed, raising=False)
    with pytest.raises(SimulatedKill):
        _save(tiny_model(seed=1), folder, tmp_path, "second")
    after = {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    assert after == before
    assert [path.name for path in folder.parent.iterdir()] == ["model"]  # the staging folder is cleaned up
    monkeypatch.undo()

    _save(tiny_model(seed=1), folder, tmp_path, "second")  # and a later save replaces it completely
    assert '"second"' in (folder / "results.json").read_text()
    reloaded = MoLExForAudioClassification.from_pretrained(folder)
    expected = tiny_model(seed=1).state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in reloaded.state_dict().items())
