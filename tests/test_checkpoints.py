"""Checkpoints hold only safetensors and JSON, and resuming never opens anything else (issue 10, item 6)."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
from train_fixtures import tiny_run_args, write_synthetic_asvspoof5

from training import train
from training.trainer.checkpointing import SAFE_SUFFIXES, list_checkpoints


STATE_JSON_NAMES = ["optimizer", "rng_states", "scheduler", "train_config", "training_state"]


class _WritesAMarkerWhenUnpickled:
    """Unpickling this calls open(marker, "w"): the marker file's existence proves a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """(corpus, output_dir) of a 2-step run evaluated and checkpointed after each step."""
    corpus = write_synthetic_asvspoof5(tmp_path_factory.mktemp("corpus"), per_class=4)
    output_dir = tmp_path_factory.mktemp("run")
    train.main(tiny_run_args(corpus, output_dir, "--max_steps", "2", "--eval_every_steps", "1", "--eval_split", ""))
    return corpus, output_dir


def test_a_checkpoint_holds_only_safetensors_and_json(finished_run):
    checkpoints = list_checkpoints(finished_run[1])
    assert [p.name for p in checkpoints] == ["checkpoint_0", "checkpoint_1"]
    expected = ["best_trainable", "optimizer", "trainable"]
    expected = [f"{name}.safetensors" for name in expected] + [f"{name}.json" for name in STATE_JSON_NAMES]
    for checkpoint in checkpoints:
        names = sorted(p.name for p in checkpoint.iterdir())
        assert names == sorted(expected)
        assert all(Path(name).suffix in SAFE_SUFFIXES for name in names)


@pytest.mark.parametrize("planted", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"])
def test_a_planted_pickle_is_refused_on_resume_and_never_opened(finished_run, tmp_path, planted):
    """accelerate's load_state would unpickle these three (the planted payload would run); MoLEx refuses."""
    corpus, output_dir = finished_run
    checkpoint = list_checkpoints(output_dir)[-1]
    marker = tmp_path / "payload_ran"
    (checkpoint / planted).write_bytes(pickle.dumps(_WritesAMarkerWhenUnpickled(marker)))
    try:
        args = tiny_run_args(corpus, output_dir, "--max_steps", "3", "--resume_from_checkpoint", "latest")
        with pytest.raises(ValueError, match=rf"holds \['{planted}'\].*only JSON and safetensors"):
            train.main([*args, "--eval_split", ""])
        assert not marker.exists(), "the planted pickle was unpickled"
    finally:
        (checkpoint / planted).unlink()


def test_a_fresh_run_in_a_used_output_dir_numbers_its_checkpoints_after_the_old_ones(finished_run, tmp_path):
    """Old checkpoints count as older: they are pruned first, and `latest` is always the new run's."""
    corpus, old_run = finished_run
    output_dir = tmp_path / "reused"
    shutil.copytree(old_run, output_dir)
    train.main(tiny_run_args(corpus, output_dir, "--max_steps", "1", "--eval_split", "", "--save_total_limit", "2"))
    assert [p.name for p in list_checkpoints(output_dir)] == ["checkpoint_1", "checkpoint_2"]
    newest = json.loads((list_checkpoints(output_dir)[-1] / "training_state.json").read_text())
    assert newest["global_step"] == 1 and len(newest["history"]) == 1
