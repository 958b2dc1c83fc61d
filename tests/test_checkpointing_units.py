"""training/trainer/checkpointing.py on its own, in milliseconds: a tiny two-layer module (one frozen), AdamW with
two parameter groups and a warm-up schedule, one CPU process (issue 13: these are the tests mutation testing of
checkpointing.py runs for every mutant)."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from safetensors.torch import load_file
from transformers import get_scheduler

from training.trainer import checkpointing
from training.trainer.checkpointing import (
    list_checkpoints,
    load_checkpoint,
    load_trainable_state,
    next_iteration,
    refuse_unsafe_files,
    resolve_resume_path,
    save_checkpoint,
    trainable_state,
)


FILES = {"train_config.json": '{"note": "réglage µ"}'}  # non-ASCII: written as UTF-8 whatever the locale


class TwoLayers(torch.nn.Module):
    """A frozen 'backbone' layer and a trainable head (a weight for the decay group, a bias for the other)."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Linear(3, 3)
        self.backbone.requires_grad_(False)
        self.head = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.backbone(x)))


def make_training(seed: int = 0):
    torch.manual_seed(seed)
    model = TwoLayers()
    groups = [{"params": [model.head.weight], "weight_decay": 0.1}, {"params": [model.head.bias], "weight_decay": 0}]
    optimizer = torch.optim.AdamW(groups, lr=0.05, betas=(0.8, 0.95))
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=2, num_training_steps=10)
    return model, optimizer, scheduler


def step(model, optimizer, scheduler) -> None:
    model(torch.linspace(-1, 1, 6).view(2, 3)).pow(2).sum().backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def accelerator_for(project_dir: Path, total_limit: int | None = None) -> Accelerator:
    project = ProjectConfiguration(project_dir=str(project_dir), automatic_checkpoint_naming=True)
    project.total_limit = total_limit
    return Accelerator(cpu=True, project_config=project)


def draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_resume_restores_weights_optimizer_scheduler_rng_and_state_so_training_continues_identically(tmp_path):
    """Three steps, save, one more step = reference. A fresh model/optimizer/scheduler with scrambled RNGs, loaded
    from the checkpoint and stepped once, must land on exactly the same weights, LR and random draws."""
    accelerator = accelerator_for(tmp_path)
    model, optimizer, scheduler = make_training()
    for _ in range(3):
        step(model, optimizer, scheduler)
    best = {name: tensor + 1 for name, tensor in trainable_state(model).items()}
    state = {"global_step": 3, "best_metric": float("nan"), "history": [{"eer": 0.25}]}  # NaN survives JSON
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    path = save_checkpoint(accelerator, model, optimizer, scheduler, state, best, FILES)
    expected_draws = draws()
    saved_weights = trainable_state(model)
    step(model, optimizer, scheduler)
    expected_lr = scheduler.get_last_lr()
    expected_weights = trainable_state(model)

    resumed, resumed_optimizer, resumed_scheduler = make_training()
    with torch.no_grad():
        resumed.head.weight.add_(3.0)  # the frozen backbone is the same pretrained one; the head is not
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    loaded_state, loaded_best = load_checkpoint(accelerator, path, resumed, resumed_optimizer, resumed_scheduler)

    assert draws() == expected_draws
    assert loaded_state["global_step"] == 3 and loaded_state["history"] == [{"eer": 0.25}]
    assert np.isnan(loaded_state["best_metric"])
    assert loaded_best.keys() == best.keys() and all(torch.equal(loaded_best[n], best[n]) for n in best)
    assert all(torch.equal(t, saved_weights[n]) for n, t in trainable_state(resumed).items())
    assert [type(g["betas"]) for g in resumed_optimizer.param_groups] == [tuple, tuple]  # JSON lists made tuples
    assert [g["weight_decay"] for g in resumed_optimizer.param_groups] == [0.1, 0]
    assert resumed_scheduler.state_dict() == scheduler_state_at_save(path)
    step(resumed, resumed_optimizer, resumed_scheduler)
    assert resumed_scheduler.get_last_lr() == expected_lr
    for name, tensor in trainable_state(resumed).items():
        assert torch.equal(tensor, expected_weights[name]), f"{name} differs after resuming"
    assert torch.equal(
        resumed_optimizer.state[resumed.head.weight]["step"], optimizer.state[model.head.weight]["step"]
    )


def scheduler_state_at_save(path: Path) -> dict:
    return json.loads((path / "scheduler.json").read_text())


def test_a_checkpoint_holds_exactly_its_documented_files_with_their_contents(tmp_path):
    accelerator = accelerator_for(tmp_path / "not" / "yet" / "made")
    model, optimizer, scheduler = make_training()
    step(model, optimizer, scheduler)
    state = {"global_step": 1, "history": []}
    path = save_checkpoint(accelerator, model, optimizer, scheduler, state, None, FILES)
    assert path == tmp_path / "not" / "yet" / "made" / "checkpoints" / "checkpoint_0"
    names = ["optimizer.json", "optimizer.safetensors", "rng_states.json", "scheduler.json"]
    names += ["train_config.json", "trainable.safetensors", "training_state.json"]
    assert sorted(p.name for p in path.iterdir()) == names  # no best weights given: no best file
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint_0"]  # no staging folder left behind
    assert json.loads((path / "training_state.json").read_text()) == state
    assert (path / "train_config.json").read_bytes() == FILES["train_config.json"].encode("utf-8")
    trainable = load_file(path / "trainable.safetensors")
    assert sorted(trainable) == ["head.bias", "head.weight"]  # the frozen backbone is not saved
    assert torch.equal(trainable["head.weight"], model.head.weight.detach())
    optimizer_tensors = load_file(path / "optimizer.safetensors")
    assert sorted(optimizer_tensors) == [f"{i}.{key}" for i in (0, 1) for key in ("exp_avg", "exp_avg_sq", "step")]
    assert torch.equal(optimizer_tensors["0.exp_avg"], optimizer.state[model.head.weight]["exp_avg"])
    meta = json.loads((path / "optimizer.json").read_text())
    assert meta["state"] == {"0": {}, "1": {}}
    assert [group["params"] for group in meta["param_groups"]] == [[0], [1]]
    rng = json.loads((path / "rng_states.json").read_text())
    devices = ["cuda"] if torch.cuda.is_available() else []
    assert len(rng) == 1 and sorted(rng[0]) == sorted(["numpy", "python", "torch", *devices])  # one entry per rank
    assert torch.equal(torch.tensor(rng[0]["torch"], dtype=torch.uint8), torch.get_rng_state())
    assert rng[0]["python"][1] == list(random.getstate()[1])
    assert load_checkpoint(accelerator, path, *make_training())[1] is None  # no best file: no best weights


def test_saves_are_numbered_in_order_and_pruned_to_the_total_limit(tmp_path):
    accelerator = accelerator_for(tmp_path, total_limit=2)
    model, optimizer, scheduler = make_training()
    paths = [save_checkpoint(accelerator, model, optimizer, scheduler, {"i": i}, None, {}) for i in range(4)]
    assert [p.name for p in paths] == ["checkpoint_0", "checkpoint_1", "checkpoint_2", "checkpoint_3"]
    assert accelerator.project_configuration.iteration == 4
    assert list_checkpoints(tmp_path) == paths[2:]  # the newest two
    assert [json.loads((p / "training_state.json").read_text())["i"] for p in paths[2:]] == [2, 3]


def test_without_a_total_limit_every_checkpoint_is_kept(tmp_path):
    accelerator = accelerator_for(tmp_path, total_limit=None)
    model, optimizer, scheduler = make_training()
    for i in range(3):
        save_checkpoint(accelerator, model, optimizer, scheduler, {"i": i}, None, {})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint_0", "checkpoint_1", "checkpoint_2"]


def test_a_save_that_fails_midway_leaves_no_checkpoint_and_the_next_save_cleans_up(tmp_path):
    """A run killed while writing leaves a staging folder but never a `checkpoint_<i>` that looks resumable."""
    accelerator = accelerator_for(tmp_path)
    model, optimizer, scheduler = make_training()
    first = save_checkpoint(accelerator, model, optimizer, scheduler, {"i": 0}, None, {})
    with pytest.raises(FileNotFoundError):  # the extra file's folder does not exist: fails after the tensors
        save_checkpoint(accelerator, model, optimizer, scheduler, {"i": 1}, None, {"no/such/folder.json": "{}"})
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == [".staging-checkpoint_1", "checkpoint_0"]
    assert list_checkpoints(tmp_path) == [first] and resolve_resume_path(tmp_path, "latest") == first
    accelerator.project_configuration.iteration = 1  # the retry writes the same number
    second = save_checkpoint(accelerator, model, optimizer, scheduler, {"i": 1}, None, {})
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint_0", "checkpoint_1"]
    assert json.loads((second / "training_state.json").read_text()) == {"i": 1}


def test_saving_over_an_existing_checkpoint_number_replaces_it_whole(tmp_path):
    accelerator = accelerator_for(tmp_path)
    model, optimizer, scheduler = make_training()
    path = save_checkpoint(accelerator, model, optimizer, scheduler, {"i": 0}, {"x": torch.ones(1)}, {})
    accelerator.project_configuration.iteration = 0
    assert save_checkpoint(accelerator, model, optimizer, scheduler, {"i": 1}, None, {}) == path
    assert json.loads((path / "training_state.json").read_text()) == {"i": 1}
    assert not (path / "best_trainable.safetensors").exists()  # nothing of the old checkpoint is left


def test_list_checkpoints_sorts_by_number_and_skips_incomplete_or_foreign_folders(tmp_path):
    assert list_checkpoints(tmp_path) == [] and next_iteration(tmp_path) == 0
    root = tmp_path / "checkpoints"
    for name in [
        "checkpoint_10",
        "checkpoint_9",
        "checkpoint_2",
        "checkpoint_x",
        "old_checkpoint_11",
        "checkpoint_3b",
    ]:
        (root / name).mkdir(parents=True)
        (root / name / "training_state.json").write_text("{}")
    (root / "checkpoint_12").mkdir()  # killed before its state file: not complete
    (root / "checkpoint_13").mkdir()
    (root / "checkpoint_13" / "training_state.json").mkdir()  # a folder, not the state file
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint_2", "checkpoint_9", "checkpoint_10"]
    assert next_iteration(tmp_path) == 11  # numeric, not string, order
    assert resolve_resume_path(tmp_path, "latest") == root / "checkpoint_10"
    assert resolve_resume_path(tmp_path, None) is None
    assert resolve_resume_path(tmp_path, str(root / "checkpoint_9")) == root / "checkpoint_9"
    with pytest.raises(FileNotFoundError) as error:
        resolve_resume_path(tmp_path, str(root / "checkpoint_12"))
    assert str(error.value) == f"`resume_from_checkpoint` {root / 'checkpoint_12'} is not a complete checkpoint " + (
        "(no training_state.json)"
    )
    (tmp_path / "only_a_file").write_text("")
    assert list_checkpoints(tmp_path / "only_a_file") == []


def test_a_file_other_than_json_or_safetensors_anywhere_in_the_checkpoint_is_refused_by_name(tmp_path):
    (tmp_path / "nested").mkdir()
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.safetensors").write_bytes(b"")
    (tmp_path / "folder.pkl").mkdir()  # a folder is not a file that could be loaded
    refuse_unsafe_files(tmp_path)  # only safe files: fine
    (tmp_path / "nested" / "state.pt").write_bytes(b"")
    (tmp_path / "z.bin").write_bytes(b"")
    (tmp_path / "no_suffix").write_bytes(b"")
    with pytest.raises(ValueError) as error:
        refuse_unsafe_files(tmp_path)
    assert str(error.value) == (
        f"Checkpoint {tmp_path} holds ['no_suffix', 'state.pt', 'z.bin']: MoLEx checkpoints contain only JSON and "
        "safetensors files, and nothing else is ever loaded (a pickle could run code). Remove them or resume from "
        "another checkpoint."
    )


def test_load_refuses_a_planted_file_before_reading_anything(tmp_path):
    accelerator = accelerator_for(tmp_path)
    model, optimizer, scheduler = make_training()
    path = save_checkpoint(accelerator, model, optimizer, scheduler, {"i": 0}, None, {})
    (path / "optimizer.bin").write_bytes(b"not a pickle either")
    (path / "optimizer.json").write_text("not JSON")  # would fail differently if it were read first
    with pytest.raises(ValueError, match=r"holds \['optimizer.bin'\]"):
        load_checkpoint(accelerator, path, model, optimizer, scheduler)


def test_loading_trainable_weights_names_the_source_and_the_mismatched_tensors(tmp_path):
    model = TwoLayers()
    weights = trainable_state(model)
    assert all(not t.requires_grad and t.device.type == "cpu" for t in weights.values())
    weights["head.weight"].fill_(2.0)  # a copy: the model is untouched until loaded
    assert not torch.equal(model.head.weight, weights["head.weight"])
    load_trainable_state(model, weights, "here")
    assert torch.equal(model.head.weight, weights["head.weight"])
    with pytest.raises(RuntimeError) as error:
        load_trainable_state(model, {"head.weight": weights["head.weight"], "extra": torch.ones(1)}, "ckpt/x")
    assert str(error.value) == "ckpt/x does not match the model: missing ['head.bias'], unexpected ['extra']"
    many = {f"z{i}": torch.ones(1) for i in range(7)} | weights
    with pytest.raises(RuntimeError, match=r"unexpected \['z0', 'z1', 'z2', 'z3', 'z4'\]$"):
        load_trainable_state(model, many, "src")
    deep = torch.nn.Sequential(*[torch.nn.Linear(1, 1) for _ in range(4)])  # 8 trainable tensors
    with pytest.raises(RuntimeError, match=r"missing \['0.bias', '0.weight', '1.bias', '1.weight', '2.bias'\],"):
        load_trainable_state(deep, {}, "src")


def test_a_checkpoint_for_another_model_is_refused_naming_the_checkpoint(tmp_path):
    accelerator = accelerator_for(tmp_path)
    model, optimizer, scheduler = make_training()
    path = save_checkpoint(accelerator, model, optimizer, scheduler, {}, None, {})
    other, other_optimizer, other_scheduler = make_training()
    other.register_parameter("extra", torch.nn.Parameter(torch.zeros(1)))
    with pytest.raises(RuntimeError) as error:
        load_checkpoint(accelerator, path, other, other_optimizer, other_scheduler)
    assert str(error.value) == f"checkpoint {path} does not match the model: missing ['extra'], unexpected []"


def test_rng_states_saved_by_another_world_size_are_not_applied(tmp_path):
    """A run resumed on a different number of processes keeps its fresh RNGs rather than a wrong rank's."""
    accelerator = accelerator_for(tmp_path)
    model, optimizer, scheduler = make_training()
    path = save_checkpoint(accelerator, model, optimizer, scheduler, {"i": 0}, None, {})
    rng = json.loads((path / "rng_states.json").read_text())
    (path / "rng_states.json").write_text(json.dumps(rng * 2))
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    expected = draws()
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    load_checkpoint(accelerator, path, model, optimizer, scheduler)
    assert draws() == expected


class CountingSGD(torch.optim.SGD):
    """SGD that also keeps a plain-int per-parameter counter, as LBFGS does (non-tensor state goes to JSON), and a
    tensor under a key holding '.' and '/' (the separators of the saved names)."""

    def step(self, closure=None):
        super().step(closure)
        for group in self.param_groups:
            for parameter in group["params"]:
                self.state[parameter]["updates"] = self.state[parameter].get("updates", 0) + 1
                self.state[parameter]["ema/avg.sq"] = parameter.detach() ** 2


def test_non_tensor_optimizer_state_round_trips_through_json(tmp_path):
    accelerator = accelerator_for(tmp_path)
    model, _, _ = make_training()
    optimizer = CountingSGD(model.head.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    step(model, optimizer, scheduler)
    step(model, optimizer, scheduler)
    path = save_checkpoint(accelerator, model, optimizer, scheduler, {}, None, {})
    assert json.loads((path / "optimizer.json").read_text())["state"] == {"0": {"updates": 2}, "1": {"updates": 2}}
    fresh = CountingSGD(model.head.parameters(), lr=0.1, momentum=0.9)
    load_checkpoint(accelerator, path, model, fresh, torch.optim.lr_scheduler.StepLR(fresh, step_size=1))
    restored = fresh.state[model.head.weight]
    assert restored["updates"] == 2
    assert torch.equal(restored["momentum_buffer"], optimizer.state[model.head.weight]["momentum_buffer"])
    assert torch.equal(restored["ema/avg.sq"], model.head.weight.detach() ** 2)


def test_a_grad_scaler_state_is_saved_and_restored(tmp_path):
    """fp16 runs (GPU) carry a loss scaler; its state must survive a resume like the rest."""
    accelerator = accelerator_for(tmp_path)
    model, optimizer, scheduler = make_training()
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=64.0, growth_interval=7)
    path = save_checkpoint(accelerator, model, optimizer, scheduler, {}, None, {})
    saved = json.loads((path / checkpointing.SCALER_FILE).read_text())
    assert saved["scale"] == 64.0 and saved["growth_interval"] == 7
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0, growth_interval=3)
    load_checkpoint(accelerator, path, model, optimizer, scheduler)
    assert accelerator.scaler.state_dict() == saved
    accelerator.scaler = None
    without = save_checkpoint(accelerator, model, optimizer, scheduler, {}, None, {})
    assert not (without / checkpointing.SCALER_FILE).exists()
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0)  # a checkpoint without one leaves it as is
    load_checkpoint(accelerator, without, model, optimizer, scheduler)
    assert accelerator.scaler.get_scale() == 2.0
