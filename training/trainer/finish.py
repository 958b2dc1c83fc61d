"""End of training: best weights -> dev calibration -> eval scored once -> model folder, reports, results.json.

Correct without a shared disk: every rank already holds the best trainable weights in memory (taken at the same
evaluation on every rank, or broadcast by the main process on resume), scores are gathered to every rank, the
calibration is fitted on the main process and broadcast, and only the main process writes files.
"""

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from modeling_molex.atomic_saves import swap_into_place
from training.metrics.calibration import fit_llr_calibration
from training.metrics.det_plot import save_det_plot
from training.metrics.scoring import known_and_unseen_metrics, metrics_for, score_loader, write_split_reports
from training.trainer.checkpointing import load_trainable_state
from training.trainer.config import TrainConfig
from training.trainer.distributed import broadcast_json
from training.trainer.run_setup import train_attacks


if TYPE_CHECKING:
    from training.trainer.loop import Run, TrainState


def finish(run: "Run", state: "TrainState", train_seconds: float) -> dict:
    """Load the best weights, calibrate on dev, score eval once, write the model folder and results (main)."""
    config, accelerator, model, corpus = run.config, run.accelerator, run.model, run.corpus
    accelerator.wait_for_everyone()
    if run.best is None:
        raise RuntimeError("No dev evaluation ran, so there is no best model to finish with")
    unwrapped = accelerator.unwrap_model(model)
    load_trainable_state(unwrapped, run.best, f"the best weights (step {state.best_step})")
    dev = score_loader(model, run.eval_loaders[config.dev_split], accelerator, description="dev (best)")
    calibration = None
    if config.calibrate and accelerator.is_main_process:
        calibration = fit_llr_calibration(dev.scores, dev.labels)
        if calibration is None:
            run.log.write({"event": "calibration_not_stored", "reason": "dev scores rank bona fide below spoof"})
    calibration = broadcast_json(calibration, accelerator)
    unwrapped.config.calibration = calibration
    results = {"metrics": {"dev": metrics_for(dev, calibration)}, "calibration": calibration, "breakdown": {}}
    systems = {"dev": (dev.scores, dev.labels)}
    scores_dir = run.output_dir / "scores"
    if main := accelerator.is_main_process:
        write_split_reports(scores_dir, "dev", dev, corpus[config.dev_split], calibration)
    if config.eval_split:
        evaluation = score_loader(model, run.eval_loaders[config.eval_split], accelerator, description="eval")
        results["metrics"]["eval"] = metrics_for(evaluation, calibration)
        known = train_attacks(corpus) | set(config.known_attacks or [])
        split_metrics = known_and_unseen_metrics(evaluation, corpus[config.eval_split], known, calibration)
        results["metrics"].update({f"eval_{name}": value for name, value in split_metrics.items()})
        systems["eval"] = (evaluation.scores, evaluation.labels)
        if main:
            results["breakdown"] = write_split_reports(
                scores_dir, "eval", evaluation, corpus[config.eval_split], calibration
            )
    results |= {
        "dataset": {"name": config.dataset, "root": config.data_root},
        "config": config.to_dict(),
        "best_step": state.best_step,
        "global_step": state.global_step,
        "num_processes": accelerator.num_processes,
        "wall_time_s": round(train_seconds, 1),
        "dev_history": state.history,
    }
    if main:
        save_det_plot(scores_dir / "det.png", systems, title=f"MoLEx ({config.dataset})")
        results["figures"] = {"det": "scores/det.png"}
        save_model_folder(unwrapped, run.output_dir / "model", config, results)
        (run.output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    final = {
        split: {k: round(v, 6) for k, v in m.items() if k in ("eer", "min_dcf", "act_dcf", "cllr")}
        for split, m in results["metrics"].items()
    }
    print(f"FINAL_METRICS rank={accelerator.process_index} {json.dumps(final, sort_keys=True)}", flush=True)
    accelerator.wait_for_everyone()
    return results


def save_model_folder(model: torch.nn.Module, folder: Path, config: TrainConfig, results: dict) -> None:
    """save_pretrained into a staging folder, then swap it into place: `folder` always holds a whole model, the
    previous one until the new one is complete (a removal before the rename would lose both to a kill between)."""
    staging = Path(tempfile.mkdtemp(prefix=".model-", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        config.save(staging / "train_config.yaml")
        (staging / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        swap_into_place(str(staging), str(folder))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
