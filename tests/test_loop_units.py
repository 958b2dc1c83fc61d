"""training/trainer/loop.py's decisions on a run assembled by hand, in milliseconds (issue 13: mutation testing of
loop.py runs these for every mutant).

The run is real where it matters (accelerate's accumulation, prepared loader and optimizer, atomic checkpoints) and
tiny elsewhere: a one-linear 'model' that records which samples it saw, batches of one numbered sample, and a dev
metric scripted per evaluation (`score_loader` and `metrics_for` replaced), so each test knows the exact steps,
evaluations and weights the loop must produce.
"""

import json
import threading
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from safetensors.torch import load_file
from tqdm.std import tqdm
from train_fixtures import tiny_run_args, write_synthetic_asvspoof5

from modeling_molex import MoLExForAudioClassification
from training.trainer import loop
from training.trainer.checkpointing import list_checkpoints, save_checkpoint, trainable_state
from training.trainer.config import TrainConfig, parse_train_config
from training.trainer.loop import JsonlLog, Run, TrainState


@pytest.fixture(autouse=True, scope="module")
def progress_bars_with_a_thread_lock():
    """tqdm's default lock holds a multiprocessing semaphore, shared by every process forked after its creation:
    mutmut forks one process per mutant and kills the slow ones, and one killed during a progress-bar update
    leaves it held, so every later child hangs. A thread-only lock is enough for these one-process tests."""
    previous = tqdm.get_lock()
    tqdm.set_lock(threading.RLock())
    yield
    tqdm.set_lock(previous)


class Recorder(torch.nn.Module):
    """Logistic regression on (sample number, 1); remembers the sample numbers it was trained on."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(2, 1)
        self.seen: list[int] = []

    def forward(self, x, labels):
        self.seen += [int(v) for v in x[:, 0]]
        logits = self.linear(x).squeeze(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
        return SimpleNamespace(loss=loss, aux_loss=loss.detach() / 10)


def collate(samples: list[int]) -> dict:
    kept = [i for i in samples if i >= 0]  # a negative sample number stands for a clip that failed to decode
    x = torch.tensor([[float(i), 1.0] for i in kept]).view(-1, 2)
    return {"utt_ids": [str(i) for i in kept], "labels": torch.tensor([i % 2 for i in kept]), "x": x}


class EpochCollator:
    def __init__(self):
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def make_run(tmp_path, samples, total_steps, num_epochs=1, accumulation=1, **settings) -> Run:
    config = TrainConfig(data_root=str(tmp_path), output_dir=str(tmp_path), log_with="none", **settings)
    project = ProjectConfiguration(project_dir=str(tmp_path), automatic_checkpoint_naming=True)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation, project_config=project)
    model = Recorder()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    loader = torch.utils.data.DataLoader(samples, batch_size=1, shuffle=False, collate_fn=collate)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    log = JsonlLog(tmp_path / "logs" / "train_log.jsonl", True)
    return Run(config, accelerator, None, model, optimizer, scheduler, loader, {"dev": "dev loader"}, EpochCollator(),
               log, total_steps, num_epochs)  # fmt: skip


@pytest.fixture
def scripted_dev(monkeypatch):
    """Evaluation i reports EER `eers[i]` (min DCF moves the other way, so the chosen metric matters)."""
    eers: list[float] = []
    calls: list[tuple] = []

    def score_loader(model, loader, accelerator, description):
        assert isinstance(model, Recorder) and isinstance(accelerator, Accelerator)
        calls.append((loader, description))
        return "dev scores"

    def metrics_for(scores, calibration):
        assert (scores, calibration) == ("dev scores", None)
        eer = eers[len(calls) - 1]
        return {"eer": eer, "min_dcf": 1 - eer}

    monkeypatch.setattr(loop, "score_loader", score_loader)
    monkeypatch.setattr(loop, "metrics_for", metrics_for)
    return eers, calls


def log_records(run: Run, event: str) -> list[dict]:
    lines = (run.output_dir / "logs" / "train_log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def saved_steps(run: Run) -> list[int]:
    return [
        json.loads((p / "training_state.json").read_text())["global_step"] for p in list_checkpoints(run.output_dir)
    ]


def test_the_loop_keeps_the_lowest_metric_and_stops_after_patience_evaluations_without_improvement(
    tmp_path, scripted_dev, capsys
):
    eers, calls = scripted_dev
    eers += [0.4, 0.3, 0.2, 0.35, 0.45, 0.5, 0.55, 0.6]
    run = make_run(tmp_path, list(range(8)), total_steps=8, eval_every_steps=1, early_stopping_patience=2)
    tracked = []  # what the trackers (TensorBoard, trackio) would receive
    run.accelerator.log = lambda values, step=None: tracked.append((step, sorted(values)))
    state = TrainState()
    loop.train(run, state)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "distributed: NO, model: Recorder"
    assert printed[3] == "step 3: dev EER 20.00% minDCF 0.8000"
    train_keys = ["train/aux_loss", "train/epoch", "train/loss", "train/lr"]
    assert tracked[:2] == [(1, train_keys), (1, ["dev/eer", "dev/min_dcf"])] and len(tracked) == 10
    assert (state.global_step, state.best_step, state.best_metric, state.evals_without_improvement) == (5, 3, 0.2, 2)
    assert calls == [("dev loader", "dev")] * 5
    assert [(r["step"], r["epoch"], r["eer"], r["min_dcf"]) for r in state.history] == [
        (step, 0, eer, 1 - eer) for step, eer in zip(range(1, 6), eers, strict=False)
    ]
    assert run.model.seen == [0, 1, 2, 3, 4]
    checkpoints = list_checkpoints(tmp_path)
    assert saved_steps(run) == [1, 2, 3, 4, 5]
    at_best = load_file(checkpoints[2] / "trainable.safetensors")
    assert not torch.equal(at_best["linear.weight"], run.model.linear.weight.detach())  # it moved after step 3
    assert all(torch.equal(run.best[name], tensor) for name, tensor in at_best.items())
    assert all(torch.equal(load_file(checkpoints[4] / "best_trainable.safetensors")[n], at_best[n]) for n in at_best)
    assert json.loads((checkpoints[4] / "training_state.json").read_text()) == state.to_dict()
    assert json.loads((checkpoints[4] / "train_config.json").read_text()) == run.config.to_dict()
    assert log_records(run, "start")[0] | {"time": 0} == {"time": 0, "event": "start", "total_steps": 8,
                                                          "num_processes": 1}  # fmt: skip
    train_records = log_records(run, "train")
    assert [(r["step"], r["epoch"]) for r in train_records] == [(s, 0) for s in range(1, 6)]
    assert [r["lr"] for r in train_records] == pytest.approx([0.1 / (1 + s) for s in range(1, 6)])
    assert all(r["aux_loss"] == pytest.approx(r["loss"] / 10) and r["loss"] > 0 for r in train_records)
    assert [r["eer"] for r in log_records(run, "dev")] == eers[:5]


def test_the_metric_for_best_decides_which_evaluation_is_kept(tmp_path, scripted_dev):
    eers, _ = scripted_dev
    eers += [0.4, 0.3, 0.35]
    run = make_run(tmp_path, list(range(3)), total_steps=3, eval_every_steps=1, metric_for_best="min_dcf")
    state = TrainState()
    loop.train(run, state)
    assert (state.best_step, state.best_metric) == (1, 1 - 0.4)


def test_without_a_step_schedule_the_loop_evaluates_at_each_epoch_end(tmp_path, scripted_dev):
    eers, _ = scripted_dev
    eers += [0.3, 0.4]
    run = make_run(tmp_path, [0, 1, 2], total_steps=6, num_epochs=2, eval_every_steps=0, early_stopping_patience=1)
    state = TrainState()
    loop.train(run, state)
    assert run.model.seen == [0, 1, 2, 0, 1, 2]
    # epoch 0 ends and is evaluated; the last step ends the run inside epoch 1, whose final evaluation follows
    assert [(r["step"], r["epoch"]) for r in state.history] == [(3, 1), (6, 1)]
    assert (state.epoch, state.batches_in_epoch, state.global_step) == (1, 3, 6)
    assert run.train_collator.epochs == [0, 1]
    assert [(r["step"], r["epoch"]) for r in log_records(run, "train")] == [(1, 0), (2, 0), (3, 0), (4, 1), (5, 1),
                                                                          (6, 1)]  # fmt: skip


def test_per_epoch_evaluation_also_stops_early(tmp_path, scripted_dev):
    eers, _ = scripted_dev
    eers += [0.3, 0.4, 0.5, 0.6]
    run = make_run(tmp_path, [0, 1], total_steps=8, num_epochs=4, eval_every_steps=0, early_stopping_patience=1)
    state = TrainState()
    loop.train(run, state)
    assert (state.global_step, state.epoch, [r["step"] for r in state.history]) == (4, 2, [2, 4])


def test_patience_zero_never_stops_and_an_off_schedule_last_step_is_evaluated_once(tmp_path, scripted_dev):
    eers, _ = scripted_dev
    eers += [0.1, 0.2, 0.3]
    run = make_run(tmp_path, list(range(5)), total_steps=5, eval_every_steps=2, early_stopping_patience=0)
    state = TrainState()
    loop.train(run, state)
    assert [r["step"] for r in state.history] == [2, 4, 5]
    assert saved_steps(run) == [2, 4, 5]
    assert state.evals_without_improvement == 2 and state.global_step == 5


def test_an_on_schedule_last_step_is_not_evaluated_twice(tmp_path, scripted_dev):
    eers, _ = scripted_dev
    eers += [0.1, 0.2, 0.3]
    run = make_run(tmp_path, list(range(6)), total_steps=4, eval_every_steps=2)
    state = TrainState()
    loop.train(run, state)
    assert [r["step"] for r in state.history] == [2, 4] and run.model.seen == [0, 1, 2, 3]


def test_gradient_accumulation_counts_optimizer_steps_not_batches(tmp_path, scripted_dev):
    eers, _ = scripted_dev
    eers += [0.1]
    run = make_run(tmp_path, list(range(4)), total_steps=2, accumulation=2, eval_every_steps=2)
    before = run.model.linear.weight.detach().clone()
    state = TrainState()
    loop.train(run, state)
    assert (state.global_step, state.batches_in_epoch, run.model.seen) == (2, 4, [0, 1, 2, 3])
    assert run.scheduler.last_epoch == 2  # stepped once per optimizer step
    assert run.train_collator.epochs == [0]  # one pass over the epoch, not restarted after a micro-batch
    assert [r["step"] for r in log_records(run, "train")] == [1, 2]
    assert not torch.equal(before, run.model.linear.weight)


def test_a_resumed_epoch_skips_the_batches_already_consumed(tmp_path, scripted_dev):
    eers, _ = scripted_dev
    eers += [0.1]
    run = make_run(tmp_path, list(range(5)), total_steps=5, eval_every_steps=0)
    state = TrainState(global_step=2, batches_in_epoch=2)
    loop.train(run, state)
    assert run.model.seen == [2, 3, 4] and (state.global_step, state.batches_in_epoch) == (5, 5)


def test_a_batch_that_failed_to_decode_is_skipped_but_counted_as_consumed(tmp_path, scripted_dev):
    eers, _ = scripted_dev
    eers += [0.1]
    run = make_run(tmp_path, [0, -1, 2, 3], total_steps=3, eval_every_steps=3)
    state = TrainState()
    loop.train(run, state)
    assert run.model.seen == [0, 2, 3] and state.global_step == 3 and state.batches_in_epoch == 4
    assert run.train_collator.epochs == [0]  # the epoch goes on after the empty batch, it is not restarted


def test_the_epoch_count_bounds_a_run_whose_skipped_batches_leave_it_short_of_total_steps(tmp_path, scripted_dev):
    eers, _ = scripted_dev
    eers += [0.1, 0.2]
    run = make_run(tmp_path, [0, -1, 2], total_steps=3, num_epochs=1, eval_every_steps=0)
    state = TrainState()
    loop.train(run, state)
    assert run.model.seen == [0, 2] and state.global_step == 2 and [r["step"] for r in state.history] == [2]


def test_the_gradient_check_runs_at_the_first_optimizer_step_only(tmp_path, scripted_dev):
    """Checked once (it walks every parameter): a parameter missing a gradient at step 1 stops the run, one
    missing later does not."""
    eers, _ = scripted_dev
    eers += [0.1, 0.2]

    class FirstStepOnly(Recorder):
        def __init__(self):
            super().__init__()
            self.extra = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, labels):
            output = super().forward(x, labels)
            if len(self.seen) == 1:  # only the first batch uses `extra`
                output.loss = output.loss + self.extra.sum()
            return output

    run = make_run(tmp_path / "a", [0, 1, 2], total_steps=3, eval_every_steps=3)
    run.model = FirstStepOnly()
    run.optimizer = run.accelerator.prepare(torch.optim.SGD(run.model.parameters(), lr=0.1))
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda step: 1.0)
    loop.train(run, TrainState())
    assert run.model.seen == [0, 1, 2]
    bypassed = make_run(tmp_path / "b", [0, 1], total_steps=2, eval_every_steps=2)
    bypassed.model.register_parameter("bypassed", torch.nn.Parameter(torch.zeros(1)))
    with pytest.raises(RuntimeError, match=r"^1 trainable parameters got no gradient, e.g. \['bypassed'\]$"):
        loop.train(bypassed, TrainState())


def test_a_finished_state_trains_nothing_and_is_evaluated_only_if_its_last_step_was_not(tmp_path, scripted_dev):
    eers, _ = scripted_dev
    eers += [0.1]
    run = make_run(tmp_path, list(range(3)), total_steps=3, eval_every_steps=1)
    done = TrainState(global_step=3, history=[{"step": 3}])
    loop.train(run, done)
    assert run.model.seen == [] and done.history == [{"step": 3}]
    unevaluated = TrainState(global_step=3, history=[{"step": 2}])
    loop.train(run, unevaluated)
    assert run.model.seen == [] and [r["step"] for r in unevaluated.history] == [2, 3]
    exhausted = TrainState(global_step=1, evals_without_improvement=2, history=[{"step": 1}])
    loop.train(make_run(tmp_path / "b", list(range(3)), 3, early_stopping_patience=2), exhausted)
    assert exhausted.global_step == 1


@pytest.mark.parametrize("max_grad_norm", [0.0, 0.01])
def test_gradients_are_clipped_to_max_grad_norm_and_not_clipped_at_zero(tmp_path, scripted_dev, max_grad_norm):
    eers, _ = scripted_dev
    eers += [0.1]
    run = make_run(tmp_path, [3], total_steps=1, eval_every_steps=1, max_grad_norm=max_grad_norm)
    reference = Recorder()
    reference(torch.tensor([[3.0, 1.0]]), torch.tensor([1])).loss.backward()
    raw = torch.cat([p.grad.flatten() for p in reference.parameters()])
    before = torch.cat([p.detach().flatten().clone() for p in run.model.parameters()])
    loop.train(run, TrainState())
    change = before - torch.cat([p.detach().flatten() for p in run.model.parameters()])
    expected = raw * 0.1 if max_grad_norm == 0 else raw / raw.norm() * max_grad_norm * 0.1
    assert raw.norm() > 0.1 and torch.allclose(change, expected, atol=1e-7)


def test_a_parameter_without_gradient_is_an_error_naming_it():
    model = torch.nn.Linear(2, 1)
    model.register_parameter("unused", torch.nn.Parameter(torch.zeros(1)))
    model.register_parameter("frozen", torch.nn.Parameter(torch.zeros(1), requires_grad=False))
    model(torch.ones(1, 2)).sum().backward()
    with pytest.raises(RuntimeError) as error:
        loop.check_every_trainable_parameter_has_a_gradient(model)
    assert str(error.value) == "1 trainable parameters got no gradient, e.g. ['unused']"
    model.unused.grad = torch.zeros(1)
    loop.check_every_trainable_parameter_has_a_gradient(model)
    untouched = torch.nn.Sequential(*[torch.nn.Linear(1, 1) for _ in range(4)])  # 8 tensors, none with a gradient
    with pytest.raises(
        RuntimeError, match=r"^8 trainable .* \['0.weight', '0.bias', '1.weight', '1.bias', '2.weight'\]$"
    ):
        loop.check_every_trainable_parameter_has_a_gradient(untouched)


def test_train_state_records_improvements_strictly_and_round_trips_as_a_dict():
    state = TrainState(global_step=4)
    assert state.last_eval_step is None and not state.patience_exhausted(1)
    assert state.record_evaluation(0.5) and (state.best_metric, state.best_step) == (0.5, 4)
    state.global_step = 6
    assert not state.record_evaluation(0.5)  # a tie is not an improvement
    assert state.evals_without_improvement == 1 and state.patience_exhausted(1) and not state.patience_exhausted(2)
    assert not state.patience_exhausted(0)
    assert state.record_evaluation(0.25) and (state.best_step, state.evals_without_improvement) == (6, 0)
    state.history.append({"step": 6})
    assert state.last_eval_step == 6
    assert TrainState.from_dict(state.to_dict()) == state
    with pytest.raises(ValueError) as error:
        TrainState.from_dict({"global_step": 1, "zeta": 0, "alpha": 1})
    assert str(error.value) == "training state has unknown fields ['alpha', 'zeta']"


def test_the_jsonl_log_appends_one_timestamped_record_per_line_on_the_main_process_only(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "time", SimpleNamespace(time=lambda: 12.34567))
    log = JsonlLog(tmp_path / "new" / "log.jsonl", enabled=True)
    log.write({"event": "a"})
    log.write({"event": "b", "time": 1})
    assert (tmp_path / "new" / "log.jsonl").read_text() == (
        '{"time": 12.346, "event": "a"}\n{"time": 1, "event": "b"}\n'
    )
    JsonlLog(tmp_path / "new" / "log.jsonl", enabled=True).write({"event": "c"})  # a resumed run appends
    assert (tmp_path / "new" / "log.jsonl").read_text().count("\n") == 3
    JsonlLog(tmp_path / "other" / "log.jsonl", enabled=False).write({"event": "a"})
    assert not (tmp_path / "other").exists()


def test_trackers_follow_log_with(monkeypatch, tmp_path):
    def config(log_with):
        return TrainConfig(data_root=str(tmp_path), log_with=log_with)

    assert loop._trackers(config("none")) is None
    assert loop._trackers(config("wandb")) == ["wandb"]
    monkeypatch.setattr(loop.importlib.util, "find_spec", lambda name: name == "tensorboard" or None)
    assert loop._trackers(config("auto")) == ["tensorboard"]
    monkeypatch.setattr(loop.importlib.util, "find_spec", lambda name: None)
    assert loop._trackers(config("auto")) is None


def test_restore_or_start_numbers_after_old_checkpoints_and_resumes_the_named_one(tmp_path, capsys):
    run = make_run(tmp_path, [0], total_steps=1)
    accelerator = run.accelerator
    accelerator.project_configuration.iteration = 4
    state = TrainState(global_step=7, best_step=5, history=[{"step": 7}])
    saved = trainable_state(run.model)
    best = {n: t + 1 for n, t in saved.items()}
    save_checkpoint(accelerator, run.model, run.optimizer, run.scheduler, state.to_dict(), best, {})
    assert loop.restore_or_start(run) == TrainState() and run.best is None  # resume_from_checkpoint unset
    assert accelerator.project_configuration.iteration == 5
    with torch.no_grad():
        run.model.linear.weight.add_(1.0)
    run.config.resume_from_checkpoint = "latest"
    accelerator.project_configuration.iteration = 0
    assert loop.restore_or_start(run) == state
    assert accelerator.project_configuration.iteration == 5
    assert all(torch.equal(run.best[n], best[n]) for n in best) and run.best.keys() == best.keys()
    assert torch.equal(run.model.linear.weight, saved["linear.weight"])
    path = str(tmp_path / "checkpoints" / "checkpoint_4")
    assert capsys.readouterr().out == f"Resumed from {path} at step 7\n"
    assert log_records(run, "resumed")[0] | {"time": 0} == {"time": 0, "event": "resumed", "checkpoint": path,
                                                            "global_step": 7}  # fmt: skip


@pytest.mark.parametrize("max_steps", [0, 1, 3])
def test_setup_run_assembles_the_accelerator_loaders_and_step_counts_from_the_config(tmp_path, max_steps):
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=5, seconds=0.3)
    args = tiny_run_args(corpus, tmp_path / "run", "--num_epochs", "2", "--max_steps", str(max_steps))
    args += ["--gradient_accumulation_steps", "2", "--save_total_limit", "3", "--seed", "5"]
    run = loop.setup_run(parse_train_config(args))
    accelerator, config = run.accelerator, run.config
    assert accelerator.device.type == "cpu" and accelerator.mixed_precision == "no"
    assert isinstance(run.model, MoLExForAudioClassification) and run.model.config.adapter.num_experts == 4
    assert run.train_collator.policy.normalize is run.model.config.normalize_audio
    assert all(len(loader) == 3 for loader in run.eval_loaders.values())  # 10 clips per split, batches of 4
    assert accelerator.gradient_accumulation_steps == 2 and accelerator.trackers == []
    project = accelerator.project_configuration
    assert (project.project_dir, project.automatic_checkpoint_naming, project.total_limit) == (str(run.output_dir),
                                                                                               True, 3)  # fmt: skip
    assert accelerator.dataloader_config.use_seedable_sampler and accelerator.dataloader_config.data_seed == 5
    assert accelerator.ddp_handler.find_unused_parameters is False
    assert parse_train_config(["--config", str(run.output_dir / "train_config.yaml")]) == config
    assert sorted(run.eval_loaders) == ["dev", "eval"] and len(run.corpus["train"]) == 10
    assert len(run.train_loader) == 3  # 10 clips in batches of 4, prepared for the accelerator
    assert run.optimizer.optimizer is run.scheduler.optimizer  # prepared optimizer, scheduler stepped by hand
    # 3 micro-batches, 2 per optimizer step: 2 steps per epoch (the last one short); max_steps overrides epochs
    assert (run.total_steps, run.num_epochs) == {0: (4, 2), 1: (1, 1), 3: (3, 2)}[max_steps]
    assert run.log.enabled and run.log.path == run.output_dir / "logs" / "train_log.jsonl"
    assert run.best is None and run.train_collator.train


def test_main_parses_sets_up_restores_trains_then_finishes_with_the_training_time(tmp_path, monkeypatch):
    """The order and hand-offs of `main`, each stage replaced by a recorder (the stages are tested above)."""
    calls = []
    accelerator = SimpleNamespace(end_training=lambda: calls.append("end_training"))
    run, state = SimpleNamespace(accelerator=accelerator), TrainState(global_step=4)
    clock = iter([100.0, 107.5])
    monkeypatch.setattr(loop, "time", SimpleNamespace(time=lambda: next(clock)))
    monkeypatch.setattr(loop, "setup_run", lambda config: calls.append(("setup_run", config.seed)) or run)
    monkeypatch.setattr(loop, "restore_or_start", lambda r: calls.append(("restore", r is run)) or state)
    monkeypatch.setattr(loop, "train", lambda r, s: calls.append(("train", r is run, s is state)))
    monkeypatch.setattr(
        loop, "finish", lambda r, s, t: calls.append(("finish", r is run, s is state, t)) or {"done": 1}
    )
    assert loop.main(["--data_root", str(tmp_path), "--seed", "11"]) == {"done": 1}
    assert calls == [("setup_run", 11), ("restore", True), ("train", True, True), ("finish", True, True, 7.5),
                     "end_training"]  # fmt: skip


def test_refused_launches_say_what_to_do(monkeypatch):
    accelerator = Accelerator(cpu=True)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "True")  # accelerate writes booleans either way
    with pytest.raises(RuntimeError) as error:
        loop.check_launch(accelerator)
    assert str(error.value) == (
        "FSDP/DeepSpeed sharding is not supported: MoLEx trains its small expert set with DDP (see README, 'Several "
        "nodes'); launch with --multi_gpu (or --num_machines N) instead of --use_fsdp"
    )
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(RuntimeError) as error:
        loop.check_launch(accelerator)
    assert str(error.value) == (
        "3 processes were launched but accelerate runs each of them alone (distributed type NO); on CPU pass "
        "`--cpu true`"
    )
