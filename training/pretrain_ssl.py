"""Pretrain a small speech SSL encoder here, on unlabelled train-split audio (HuBERT-style masked prediction).

    accelerate launch training/pretrain_ssl.py --config configs/ssl_tiny.yaml [--key value ...]
    python -m training.pretrain_ssl --config configs/ssl_tiny.yaml --max_minutes 30 --resume true

Steps: build the unlabelled pool once (train split only, checked for dev/eval leaks) -> fit k-means codebooks on its
frames -> masked prediction with Accelerate (atomic checkpoints without pickle, progress bar, loss and masked-
accuracy log) -> `OUTPUT_DIR/encoder/`, a `Wav2Vec2Model` folder with its feature extractor that `AutoModel` and
`MoLExForAudioClassification.from_backbone` load. `--max_steps` sets the schedule, `--max_minutes` stops early (with
a checkpoint and an export); `--resume true` continues from the newest checkpoint at the same step.
"""

import sys
from pathlib import Path


if __package__ in (None, ""):  # run as a script (accelerate launch): import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import get_scheduler  # noqa: E402

from training.encoders.ssl_batches import load_pool, make_batch  # noqa: E402
from training.encoders.ssl_checkpoint import list_checkpoints, load_checkpoint, save_checkpoint  # noqa: E402
from training.encoders.ssl_config import SSLPretrainConfig, parse_ssl_config  # noqa: E402
from training.encoders.ssl_model import (  # noqa: E402
    MaskedPredictionModel,
    count_parameters,
    encoder_config,
    export_encoder,
)
from training.encoders.ssl_pool import MANIFEST, build_pool, check_pool_hygiene, read_manifest  # noqa: E402
from training.encoders.ssl_targets import Codebook, fit_codebook, target_entropy  # noqa: E402


CODEBOOK_FILE = "codebooks.safetensors"


def prepare_pool(config: SSLPretrainConfig, accelerator: Accelerator):
    """Build the pool if absent (main process), select from it, check hygiene, decode it into memory."""
    pool_dir = config.resolved_pool_dir
    if accelerator.is_main_process and not (pool_dir / MANIFEST).is_file():
        summary = build_pool(
            pool_dir,
            config.corpus_dir,
            use_spoofs=True,  # built once with spoofs; `use_training_spoofs` selects below, so both runs share it
            extra_bonafide=config.extra_bonafide,
            spoofs_per_attack=config.extra_spoofs_per_attack,
            coded_fraction=config.coded_fraction,
            seed=config.seed,
            workers=config.pool_workers,
        )
        accelerator.print(f"built the pretraining pool in {pool_dir}: {summary['clips']} clips, {summary['hours']} h")
    accelerator.wait_for_everyone()
    clips = read_manifest(pool_dir)
    if not config.use_training_spoofs:
        clips = [c for c in clips if c.attack == "bonafide"]
    if config.max_pool_clips is not None and config.max_pool_clips < len(clips):
        keep = np.sort(np.random.default_rng(config.seed).choice(len(clips), config.max_pool_clips, replace=False))
        clips = [clips[i] for i in keep]
    check_pool_hygiene(clips, config.corpus_dir)
    return load_pool(clips, config.min_clip_samples, config.on_bad_audio)


def prepare_codebooks(config: SSLPretrainConfig, pool, output_dir: Path) -> tuple[list[Codebook], dict]:
    """Load the run's codebooks (a resumed run must keep its targets) or fit them on normalised pool frames."""
    specs = config.codebook_specs
    path = output_dir / CODEBOOK_FILE
    if path.is_file():
        tensors = load_file(path)
        codebooks = [Codebook.from_tensors(spec, tensors, f"codebook{i}") for i, spec in enumerate(specs)]
        for spec, book in zip(specs, codebooks, strict=True):
            if book.centroids.shape[0] != spec.clusters:
                raise ValueError(f"{path} does not match `codebooks` {config.codebooks}: delete it or the run folder")
        return codebooks, json.loads((output_dir / "codebooks.json").read_text())
    rng = np.random.default_rng([config.seed, 11])
    order = rng.permutation(len(pool.waves))
    waves, frames = [], 0
    for index in order:  # a seeded subset with about twice the frames k-means samples from
        wave = pool.float_wave(int(index))
        waves.append((wave - wave.mean()) / np.sqrt(wave.var() + 1e-7))
        frames += len(wave) // 320
        if frames > 2 * config.kmeans_frames:
            break
    codebooks, info = [], {"codebooks": []}
    for i, spec in enumerate(specs):
        book = fit_codebook(spec, waves, config.kmeans_frames, config.kmeans_iterations, config.seed + i)
        sample = torch.cat(
            [book.assign(torch.from_numpy(w[None]), max(1, (len(w) - 400) // 320 + 1))[0] for w in waves[:200]]
        )
        info["codebooks"].append(
            {**config.codebooks[i], "target_entropy_nats": round(target_entropy(sample, spec.clusters), 3)}
        )
        codebooks.append(book)
    tensors = {k: v for i, book in enumerate(codebooks) for k, v in book.tensors(f"codebook{i}").items()}
    staging = path.with_name(f".{path.name}.tmp")
    save_file(tensors, staging)
    (output_dir / "codebooks.json").write_text(json.dumps(info, indent=2) + "\n")
    staging.replace(path)
    return codebooks, info


def make_optimizer(model: torch.nn.Module, config: SSLPretrainConfig):
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
    )
    warmup = int(config.warmup_ratio * config.max_steps)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=warmup, num_training_steps=config.max_steps)
    return optimizer, scheduler


def main(argv: list[str] | None = None) -> dict:
    config = parse_ssl_config(argv)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    accelerator = Accelerator(cpu=config.cpu)
    main_process = accelerator.is_main_process
    output_dir = Path(config.output_dir)
    (output_dir / "logs").mkdir(parents=True, exist_ok=True)
    if main_process:
        config.save(output_dir / "pretrain_config.yaml")
    pool = prepare_pool(config, accelerator)
    accelerator.print(
        f"pool: {len(pool.waves)} clips ({sum(len(w) for w in pool.waves) / 16000 / 3600:.2f} h); "
        f"{len(pool.unreadable)} unreadable skipped, {pool.too_short} shorter than {config.min_clip_samples} samples"
    )
    log_path = output_dir / "logs" / "pretrain_log.jsonl"

    def log(record: dict) -> None:
        if main_process:
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")

    if pool.unreadable:
        log({"event": "unreadable_clips", "count": len(pool.unreadable), "files": pool.unreadable})
    codebooks, codebook_info = prepare_codebooks(config, pool, output_dir)
    torch.manual_seed(config.seed)
    model = MaskedPredictionModel(encoder_config(config), [spec.clusters for spec in config.codebook_specs])
    optimizer, scheduler = make_optimizer(model, config)
    state = {"step": 0, "train_seconds": 0.0}
    checkpoints = list_checkpoints(output_dir) if config.resume else []
    if checkpoints:
        state = load_checkpoint(checkpoints[-1], model, optimizer, scheduler)
        log({"event": "resumed", "checkpoint": str(checkpoints[-1]), "step": state["step"]})
        accelerator.print(f"resumed from {checkpoints[-1]} at step {state['step']}")
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    encoder_params = count_parameters(unwrapped.encoder)
    log({"event": "start", "step": state["step"], "max_steps": config.max_steps, "encoder_parameters": encoder_params})
    accelerator.print(f"encoder: {encoder_params / 1e6:.2f} M parameters; codebooks {codebook_info['codebooks']}")

    started = time.time()
    deadline = started + 60 * config.max_minutes if config.max_minutes else math.inf
    progress = tqdm(total=config.max_steps, initial=state["step"], disable=not main_process, desc="ssl pretrain")
    window: dict[str, list[float]] = {}
    config_text = json.dumps(config.to_dict(), indent=2)

    def checkpoint() -> None:
        if main_process:
            state["train_seconds"] = round(state["train_seconds"] + time.time() - last_mark[0], 1)
            last_mark[0] = time.time()
            save_checkpoint(
                output_dir,
                state["step"],
                unwrapped,
                optimizer,
                scheduler,
                state,
                config.save_total_limit,
                {"pretrain_config.json": config_text},
            )
        accelerator.wait_for_everyone()

    last_mark = [time.time()]
    saved_step = state["step"]
    model.train()
    first_step = state["step"]
    # At least one step per invocation, so even a tiny --max_minutes makes progress (and a checkpoint).
    while state["step"] < config.max_steps and (state["step"] == first_step or time.time() < deadline):
        step = state["step"]
        torch.manual_seed(config.seed * 1_000_003 + step)  # dropout masks depend on the step only: exact resumes
        batch = make_batch(pool, config, step, unwrapped.num_frames, rank=accelerator.process_index)
        targets = [book.assign(batch["input_values"], batch["num_frames"]) for book in codebooks]
        device = accelerator.device
        out = model(
            batch["input_values"].to(device),
            batch["attention_mask"].to(device),
            batch["mask_time_indices"].to(device),
            batch["frame_mask"].to(device),
            [t.to(device) for t in targets],
        )
        accelerator.backward(out["loss"])
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        state["step"] = step + 1
        for key, value in out.items():
            window.setdefault(key, []).append(float(value.detach()))
        progress.update(1)
        if state["step"] % config.log_every_steps == 0 or state["step"] == config.max_steps:
            record = {key: round(sum(v) / len(v), 4) for key, v in window.items()}
            record |= {"event": "train", "step": state["step"], "lr": scheduler.get_last_lr()[0]}
            log(record)
            progress.set_postfix(loss=record["loss"], masked_acc=record.get("masked_acc_0"))
            window = {}
        if state["step"] % config.checkpoint_every_steps == 0:
            checkpoint()
            saved_step = state["step"]
    progress.close()
    stopped_early = state["step"] < config.max_steps
    if saved_step != state["step"]:
        checkpoint()
    summary = {
        "steps": state["step"],
        "max_steps": config.max_steps,
        "stopped_by_max_minutes": stopped_early,
        "train_seconds_total": state["train_seconds"],
        "encoder_parameters": encoder_params,
        "pool_clips": len(pool.waves),
        "pool_hours": round(sum(len(w) for w in pool.waves) / 16000 / 3600, 3),
        "unreadable_skipped": len(pool.unreadable),
        "codebooks": codebook_info["codebooks"],
        "machine": f"{platform.machine()} {platform.processor() or ''} threads={torch.get_num_threads()}".strip(),
        "device": str(accelerator.device),
    }
    if main_process:
        export_encoder(
            unwrapped.encoder,
            output_dir / "encoder",
            {"pretraining.json": json.dumps({**summary, "config": config.to_dict()}, indent=2) + "\n"},
        )
        log({"event": "end", **summary})
    accelerator.print(f"encoder written to {output_dir / 'encoder'} after {state['step']} steps")
    accelerator.wait_for_everyone()
    return summary


if __name__ == "__main__":
    main()
