"""Train MoLEx with Accelerate: one CPU, one GPU, several GPUs or several nodes, unchanged.

    accelerate launch training/train.py --config configs/tiny.yaml [--key value ...]
    # two CPU processes (gloo): `--cpu` alone makes accelerate start ONE process, so go through --multi_gpu:
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        training/train.py --config configs/tiny.yaml --cpu true        # (or: torchrun --nproc_per_node 2 ...)

Each dev evaluation keeps the best model (by `metric_for_best`) and writes an atomic checkpoint; the eval split is
scored once, at the end, with the best model. Outputs in `output_dir`: `model/` (Hub-ready, loadable with
AutoModelForAudioClassification + trust_remote_code), `results.json`, `scores/` (official score files, per-attack
and per-codec tables, DET plot), `checkpoints/`, `logs/train_log.jsonl`, `train_config.yaml`.
"""

import sys
from pathlib import Path


if __package__ in (None, ""):  # run as a script (accelerate launch / torchrun): import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from training.metrics.calibration import fit_llr_calibration  # noqa: E402
from training.metrics.det_plot import save_det_plot  # noqa: E402
from training.metrics.scoring import known_and_unseen_metrics, metrics_for, score_loader, write_split_reports  # noqa: E402
from training.trainer.checkpointing import load_checkpoint, resolve_resume_path, save_checkpoint  # noqa: E402
from training.trainer.config import TrainConfig, parse_train_config  # noqa: E402
from training.trainer.run_setup import (  # noqa: E402
    build_model,
    ensure_dir,
    load_corpus,
    make_loaders,
    make_optimizer,
    train_attacks,
)


ABORT_AFTER_STEP_ENV = "MOLEX_ABORT_AFTER_STEP"  # tests: die like kill -9 right after this step's checkpoint
BEST_FILE = "best_trainable.safetensors"  # trainable weights (experts, routers, back-end) of the best dev evaluation


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


def _trackers(config: TrainConfig) -> list[str] | None:
    if config.log_with == "none":
        return None
    if config.log_with == "auto":
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") else None
    return [config.log_with]


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _save_atomically(tensors: dict[str, torch.Tensor], path: Path) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(staging))
    os.replace(staging, path)


def _check_every_trainable_parameter_has_a_gradient(model: torch.nn.Module) -> None:
    """Stacked experts mean every expert tensor is on the graph even when top-k skips some experts (they get an
    exact zero gradient), so a missing gradient is a bug (an expert the backbone bypasses), not routing."""
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        raise RuntimeError(f"{len(missing)} trainable parameters got no gradient, e.g. {missing[:5]}")


def main(argv: list[str] | None = None) -> dict:
    config = parse_train_config(argv)
    output_dir = ensure_dir(config.output_dir)
    accelerator = Accelerator(
        cpu=config.cpu,
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=_trackers(config),
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    set_seed(config.seed)
    main_process = accelerator.is_main_process
    log = JsonlLog(output_dir / "logs" / "train_log.jsonl", main_process)
    config_text = json.dumps(config.to_dict(), indent=2)
    if main_process:
        config.save(output_dir / "train_config.yaml")

    corpus = load_corpus(config)
    model = build_model(config, accelerator)
    if main_process:
        model.print_trainable_parameters()
    train_loader, eval_loaders, train_collator = make_loaders(config, corpus, model.config.normalize_audio)
    train_loader = accelerator.prepare(train_loader)
    eval_loaders = {name: accelerator.prepare(loader) for name, loader in eval_loaders.items()}
    steps_per_epoch = math.ceil(len(train_loader) / config.gradient_accumulation_steps)
    total_steps = config.max_steps if config.max_steps > 0 else steps_per_epoch * config.num_epochs
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    optimizer, scheduler = make_optimizer(model, config, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # stepped by hand, once per optimizer step
    if accelerator.trackers:
        accelerator.init_trackers(
            "molex", config={k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))}
        )

    state = {"global_step": 0, "epoch": 0, "batches_in_epoch": 0, "best_metric": None, "best_step": None}
    state |= {"evals_without_improvement": 0, "history": []}
    resume_path = resolve_resume_path(output_dir, config.resume_from_checkpoint)
    best_path = output_dir / BEST_FILE
    if resume_path is not None:
        state = load_checkpoint(accelerator, resume_path)
        if main_process and (resume_path / BEST_FILE).is_file():  # a later run's best must not survive a resume
            shutil.copy2(resume_path / BEST_FILE, best_path)
        accelerator.wait_for_everyone()
        log.write({"event": "resumed", "checkpoint": str(resume_path), "global_step": state["global_step"]})
        accelerator.print(f"Resumed from {resume_path} at step {state['global_step']}")
    trainable = [p for p in model.parameters() if p.requires_grad]
    started = time.time()
    log.write({"event": "start", "total_steps": total_steps, "num_processes": accelerator.num_processes})

    def evaluate_and_checkpoint() -> bool:
        """Dev metrics, best-model tracking, atomic checkpoint. Returns True when early stopping triggers."""
        dev = score_loader(model, eval_loaders[config.dev_split], accelerator, description="dev")
        metrics = metrics_for(dev, calibration=None)
        value = metrics[config.metric_for_best]
        if state["best_metric"] is None or value < state["best_metric"]:
            state.update(best_metric=value, best_step=state["global_step"], evals_without_improvement=0)
            if main_process:
                _save_atomically(_trainable_state(accelerator.unwrap_model(model)), best_path)
        else:
            state["evals_without_improvement"] += 1
        record = {"event": "dev", "step": state["global_step"], "epoch": state["epoch"], **metrics}
        state["history"].append(record)
        log.write(record)
        accelerator.log({f"dev/{k}": v for k, v in metrics.items()}, step=state["global_step"])
        accelerator.print(
            f"step {state['global_step']}: dev EER {100 * metrics['eer']:.2f}% minDCF {metrics['min_dcf']:.4f}"
        )
        save_checkpoint(
            accelerator,
            output_dir,
            state["global_step"],
            state,
            config.save_total_limit,
            {"train_config.json": config_text},
            copies={BEST_FILE: best_path},  # the best model so far belongs to the checkpoint's state
        )
        if os.environ.get(ABORT_AFTER_STEP_ENV) == str(state["global_step"]):
            os._exit(137)
        patience = config.early_stopping_patience
        return patience > 0 and state["evals_without_improvement"] >= patience

    progress = tqdm(total=total_steps, initial=state["global_step"], disable=not main_process, desc="train")
    checked_gradients = False
    stop = state["global_step"] >= total_steps
    last_eval_step = state["history"][-1]["step"] if state["history"] else None
    for epoch in range(state["epoch"], num_epochs):
        if stop:
            break
        train_loader.set_epoch(epoch)
        train_collator.set_epoch(epoch)
        skip = state["batches_in_epoch"]
        loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        model.train()
        for batch in loader:
            state["batches_in_epoch"] += 1
            batch.pop("utt_ids")
            if batch["labels"].numel() == 0:
                if accelerator.num_processes > 1:
                    raise RuntimeError(
                        "A whole training batch failed to decode; in multi-process runs ranks would desync"
                    )
                continue
            with accelerator.accumulate(model):
                output = model(**batch)
                accelerator.backward(output.loss)
                if accelerator.sync_gradients:
                    if not checked_gradients:
                        _check_every_trainable_parameter_has_a_gradient(model)
                        checked_gradients = True
                    if config.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            state["global_step"] += 1
            progress.update(1)
            record = {"event": "train", "step": state["global_step"], "epoch": epoch, "loss": output.loss.item()}
            record |= {"aux_loss": output.aux_loss.item(), "lr": scheduler.get_last_lr()[0]}
            log.write(record)
            accelerator.log(
                {f"train/{k}": v for k, v in record.items() if k not in ("event", "step")}, step=state["global_step"]
            )
            if config.eval_every_steps and state["global_step"] % config.eval_every_steps == 0:
                stop = evaluate_and_checkpoint()
                last_eval_step = state["global_step"]
            if state["global_step"] >= total_steps:
                stop = True
            if stop:
                break
        else:
            state.update(epoch=epoch + 1, batches_in_epoch=0)
            if not config.eval_every_steps:
                stop = evaluate_and_checkpoint() or stop
                last_eval_step = state["global_step"]
    if last_eval_step != state["global_step"]:
        evaluate_and_checkpoint()
    progress.close()
    results = finish(config, accelerator, model, eval_loaders, corpus, state, best_path, time.time() - started)
    accelerator.end_training()
    return results


def finish(config, accelerator, model, eval_loaders, corpus, state, best_path, train_seconds) -> dict:
    """Best model -> dev calibration -> eval scored once -> model folder, reports and results.json."""
    output_dir = Path(config.output_dir)
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    best = load_file(str(best_path))
    missing, unexpected = unwrapped.load_state_dict(best, strict=False)
    if unexpected:
        raise RuntimeError(f"{best_path} holds unknown parameters {unexpected[:5]}")
    dev = score_loader(model, eval_loaders[config.dev_split], accelerator, description="dev (best)")
    calibration = fit_llr_calibration(dev.scores, dev.labels) if config.calibrate else None
    unwrapped.config.calibration = calibration
    results = {"metrics": {"dev": metrics_for(dev, calibration)}, "calibration": calibration, "breakdown": {}}
    systems = {"dev": (dev.scores, dev.labels)}
    scores_dir = output_dir / "scores"
    if main := accelerator.is_main_process:
        write_split_reports(scores_dir, "dev", dev, corpus[config.dev_split], calibration)
    if config.eval_split:
        evaluation = score_loader(model, eval_loaders[config.eval_split], accelerator, description="eval")
        results["metrics"]["eval"] = metrics_for(evaluation, calibration)
        split_metrics = known_and_unseen_metrics(
            evaluation, corpus[config.eval_split], train_attacks(corpus) | set(config.known_attacks or []), calibration
        )
        results["metrics"].update({f"eval_{name}": value for name, value in split_metrics.items()})
        systems["eval"] = (evaluation.scores, evaluation.labels)
        if main:
            results["breakdown"] = write_split_reports(
                scores_dir, "eval", evaluation, corpus[config.eval_split], calibration
            )
    results |= {
        "dataset": {"name": config.dataset, "root": config.data_root},
        "config": config.to_dict(),
        "best_step": state["best_step"],
        "global_step": state["global_step"],
        "num_processes": accelerator.num_processes,
        "wall_time_s": round(train_seconds, 1),
        "dev_history": state["history"],
    }
    if main:
        save_det_plot(scores_dir / "det.png", systems, title=f"MoLEx ({config.dataset})")
        results["figures"] = {"det": "scores/det.png"}
        _save_model_folder(unwrapped, output_dir / "model", config, results)
        (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    final = {
        split: {k: round(v, 6) for k, v in m.items() if k in ("eer", "min_dcf", "act_dcf", "cllr")}
        for split, m in results["metrics"].items()
    }
    print(f"FINAL_METRICS rank={accelerator.process_index} {json.dumps(final, sort_keys=True)}", flush=True)
    accelerator.wait_for_everyone()
    return results


def _save_model_folder(model, folder: Path, config: TrainConfig, results: dict) -> None:
    """save_pretrained into a staging folder, then rename: the model folder is complete or absent."""
    staging = Path(tempfile.mkdtemp(prefix=".model-", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        config.save(staging / "train_config.yaml")
        (staging / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


if __name__ == "__main__":
    main()
