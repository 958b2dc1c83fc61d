"""The training loop: a `TrainState` advanced one optimizer step at a time, evaluated and checkpointed on dev.

`main(argv)` assembles a run (accelerator, corpus, model, loaders, optimizer), restores or starts its `TrainState`,
trains, then `finish` scores the best model. Each dev evaluation keeps the best trainable weights (by
`metric_for_best`, lower is better) in memory on every rank and writes an atomic checkpoint that holds them; early
stopping counts evaluations without improvement. Everything the loop knows lives in `TrainState`, which is saved
as JSON in every checkpoint, so a resumed run continues exactly where the interrupted one stopped.
"""

import dataclasses
import importlib.util
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from datasets import DatasetDict
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from modeling_molex.model_inputs import minimum_input_samples
from training.data.loaders import AudioCollator
from training.metrics.scoring import metrics_for, score_loader
from training.trainer.checkpointing import (
    load_checkpoint,
    next_iteration,
    resolve_resume_path,
    save_checkpoint,
    trainable_state,
)
from training.trainer.config import TrainConfig, parse_train_config
from training.trainer.distributed import broadcast_json
from training.trainer.finish import finish
from training.trainer.run_setup import build_model, ensure_dir, load_corpus, make_loaders, make_optimizer


@dataclass
class TrainState:
    """Where the loop is and what it has seen; JSON in every checkpoint (`training_state.json`)."""

    global_step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    batches_in_epoch: int = 0  # micro-batches of the current epoch already consumed (skipped on resume)
    best_metric: float | None = None  # best dev `metric_for_best` so far (lower is better)
    best_step: int | None = None  # the step of that evaluation
    evals_without_improvement: int = 0  # for early stopping
    history: list[dict[str, Any]] = field(default_factory=list)  # every dev evaluation's metrics

    def record_evaluation(self, value: float) -> bool:
        """Count one dev evaluation of the metric to minimise; True when it is the best so far."""
        if self.best_metric is None or value < self.best_metric:
            self.best_metric, self.best_step, self.evals_without_improvement = value, self.global_step, 0
            return True
        self.evals_without_improvement += 1
        return False

    def patience_exhausted(self, patience: int) -> bool:
        return patience > 0 and self.evals_without_improvement >= patience

    @property
    def last_eval_step(self) -> int | None:
        return self.history[-1]["step"] if self.history else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainState":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"training state has unknown fields {unknown}")
        return cls(**data)


class JsonlLog:
    """Append-only JSON-lines log (main process only): always there, whatever trackers are installed."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")


@dataclass
class Run:
    """Everything a training run is made of, assembled once by `setup_run`."""

    config: TrainConfig
    accelerator: Accelerator
    corpus: DatasetDict
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]
    train_collator: AudioCollator
    log: JsonlLog
    total_steps: int
    num_epochs: int
    best: dict[str, torch.Tensor] | None = None  # trainable weights of the best dev evaluation (CPU, every rank)

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)


def _trackers(config: TrainConfig) -> list[str] | None:
    if config.log_with == "none":
        return None
    if config.log_with == "auto":
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") else None
    return [config.log_with]


def check_launch(accelerator: Accelerator) -> None:
    """Refuse the launches that would otherwise train silently wrong or unsupported.

    - Several launched processes that accelerate runs each alone (CPU without `cpu=True`): duplicate training.
    - FSDP / DeepSpeed: in accelerate 1.15 `--use_fsdp` takes effect only on GPUs/accelerators (on CPU it silently
      becomes DDP), and MoLEx checkpoints hold whole trainable tensors, not shards."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > accelerator.num_processes:
        raise RuntimeError(
            f"{launched} processes were launched but accelerate runs each of them alone "
            f"(distributed type {accelerator.distributed_type.value}); on CPU pass `--cpu true`"
        )
    sharded = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    sharded |= accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if sharded:
        raise RuntimeError(
            "FSDP/DeepSpeed sharding is not supported: MoLEx trains its small expert set with DDP (see README, "
            "'Several nodes'); launch with --multi_gpu (or --num_machines N) instead of --use_fsdp"
        )


def setup_run(config: TrainConfig) -> Run:
    output_dir = ensure_dir(config.output_dir)
    accelerator = Accelerator(
        cpu=config.cpu,
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=_trackers(config),
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), automatic_checkpoint_naming=True, total_limit=config.save_total_limit
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    check_launch(accelerator)
    set_seed(config.seed)
    if accelerator.is_main_process:
        config.save(output_dir / "train_config.yaml")
    model = build_model(config, accelerator)  # first: the corpus check needs the model's shortest input
    corpus = load_corpus(config, minimum_input_samples(model.config.backbone_config), model.config.sampling_rate)
    if accelerator.is_main_process:
        model.print_trainable_parameters()
    train_loader, eval_loaders, train_collator = make_loaders(config, corpus, model.config.normalize_audio)
    train_loader = accelerator.prepare(train_loader)
    eval_loaders = {name: accelerator.prepare(loader) for name, loader in eval_loaders.items()}
    steps_per_epoch = math.ceil(len(train_loader) / config.gradient_accumulation_steps)
    total_steps = config.max_steps if config.max_steps > 0 else steps_per_epoch * config.num_epochs
    optimizer, scheduler = make_optimizer(model, config, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)  # the scheduler is stepped by hand, per optimizer step
    if accelerator.trackers:
        scalars = {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("molex", config=scalars)
    log = JsonlLog(output_dir / "logs" / "train_log.jsonl", accelerator.is_main_process)
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    return Run(
        config,
        accelerator,
        corpus,
        model,
        optimizer,
        scheduler,
        train_loader,
        eval_loaders,
        train_collator,
        log,
        total_steps,
        num_epochs,
    )


def restore_or_start(run: Run) -> TrainState:
    """A fresh `TrainState`, or the one of the checkpoint named by `resume_from_checkpoint` (read on the main
    process, which alone holds checkpoints, and broadcast to every rank)."""
    accelerator, config = run.accelerator, run.config
    found = None
    if accelerator.is_main_process:
        path = resolve_resume_path(run.output_dir, config.resume_from_checkpoint)
        found = {"path": None if path is None else str(path), "iteration": next_iteration(run.output_dir)}
    found = broadcast_json(found, accelerator)
    accelerator.project_configuration.iteration, path = found["iteration"], found["path"]
    if path is None:
        return TrainState()
    state, run.best = load_checkpoint(accelerator, Path(path), run.model, run.optimizer, run.scheduler)
    state = TrainState.from_dict(state)
    run.log.write({"event": "resumed", "checkpoint": path, "global_step": state.global_step})
    accelerator.print(f"Resumed from {path} at step {state.global_step}")
    return state


def check_every_trainable_parameter_has_a_gradient(model: torch.nn.Module) -> None:
    """Stacked experts mean every expert tensor is on the graph even when top-k skips some experts (they get an
    exact zero gradient), so a missing gradient is a bug (an expert the backbone bypasses), not routing."""
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        raise RuntimeError(f"{len(missing)} trainable parameters got no gradient, e.g. {missing[:5]}")


def evaluate_and_checkpoint(run: Run, state: TrainState) -> None:
    """Dev metrics, best-weights tracking, then an atomic checkpoint holding `state` and the best weights."""
    accelerator, config = run.accelerator, run.config
    dev = score_loader(run.model, run.eval_loaders[config.dev_split], accelerator, description="dev")
    metrics = metrics_for(dev, calibration=None)
    if state.record_evaluation(metrics[config.metric_for_best]):
        run.best = trainable_state(accelerator.unwrap_model(run.model))
    record = {"event": "dev", "step": state.global_step, "epoch": state.epoch, **metrics}
    state.history.append(record)
    run.log.write(record)
    accelerator.log({f"dev/{k}": v for k, v in metrics.items()}, step=state.global_step)
    accelerator.print(f"step {state.global_step}: dev EER {100 * metrics['eer']:.2f}% minDCF {metrics['min_dcf']:.4f}")
    config_text = json.dumps(config.to_dict(), indent=2)
    save_checkpoint(
        accelerator,
        run.model,
        run.optimizer,
        run.scheduler,
        state.to_dict(),
        run.best,
        {"train_config.json": config_text},
    )


def train_step(run: Run, batch: dict, check_gradients: bool) -> torch.Tensor | None:
    """One micro-batch forward/backward; at the last micro-batch of an accumulation, clip and step. Returns the
    loss output when an optimizer step was taken, else None."""
    accelerator, model = run.accelerator, run.model
    with accelerator.accumulate(model):
        output = model(**batch)
        accelerator.backward(output.loss)
        if accelerator.sync_gradients:
            if check_gradients:
                check_every_trainable_parameter_has_a_gradient(model)
            if run.config.max_grad_norm > 0:
                trainable = [p for p in model.parameters() if p.requires_grad]
                accelerator.clip_grad_norm_(trainable, run.config.max_grad_norm)
        run.optimizer.step()
        if accelerator.sync_gradients:
            run.scheduler.step()
        run.optimizer.zero_grad()
    return output if accelerator.sync_gradients else None


def epoch_batches(run: Run, state: TrainState, epoch: int):
    """The epoch's training batches, without those a resumed state already consumed."""
    run.train_loader.set_epoch(epoch)
    run.train_collator.set_epoch(epoch)
    skip = state.batches_in_epoch
    return run.accelerator.skip_first_batches(run.train_loader, skip) if skip else run.train_loader


def train(run: Run, state: TrainState) -> None:
    """Optimizer steps until `total_steps` or early stopping, evaluating every `eval_every_steps` (or per epoch)."""
    accelerator, config = run.accelerator, run.config
    progress = tqdm(total=run.total_steps, initial=state.global_step, disable=not accelerator.is_main_process)
    gradients_checked = False
    run.log.write({"event": "start", "total_steps": run.total_steps, "num_processes": accelerator.num_processes})
    accelerator.print(f"distributed: {accelerator.distributed_type.value}, model: {type(run.model).__name__}")
    stop = state.global_step >= run.total_steps or state.patience_exhausted(config.early_stopping_patience)
    while not stop and state.epoch < run.num_epochs:
        run.model.train()
        for batch in epoch_batches(run, state, state.epoch):
            state.batches_in_epoch += 1
            batch.pop("utt_ids")
            if batch["labels"].numel() == 0:
                if accelerator.num_processes > 1:
                    raise RuntimeError(
                        "A whole training batch failed to decode; in multi-process runs ranks would desync"
                    )
                continue
            output = train_step(run, batch, check_gradients=not gradients_checked)
            if output is None:
                continue
            gradients_checked = True
            state.global_step += 1
            progress.update(1)
            record = {"event": "train", "step": state.global_step, "epoch": state.epoch, "loss": output.loss.item()}
            record |= {"aux_loss": output.aux_loss.item(), "lr": run.scheduler.get_last_lr()[0]}
            run.log.write(record)
            accelerator.log(
                {f"train/{k}": v for k, v in record.items() if k not in ("event", "step")}, state.global_step
            )
            if config.eval_every_steps and state.global_step % config.eval_every_steps == 0:
                evaluate_and_checkpoint(run, state)
                stop = state.patience_exhausted(config.early_stopping_patience)
            if stop or state.global_step >= run.total_steps:
                stop = True
                break
        else:
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
            if not config.eval_every_steps:
                evaluate_and_checkpoint(run, state)
                stop = state.patience_exhausted(config.early_stopping_patience)
    if state.last_eval_step != state.global_step:
        evaluate_and_checkpoint(run, state)
    progress.close()


def main(argv: list[str] | None = None) -> dict:
    """Train, then score the best model: `accelerate launch training/train.py --config FILE [--key value ...]`."""
    config = parse_train_config(argv)
    run = setup_run(config)
    state = restore_or_start(run)
    started = time.time()
    train(run, state)
    results = finish(run, state, time.time() - started)
    run.accelerator.end_training()
    return results
