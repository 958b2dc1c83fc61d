"""Train MoLEx with Accelerate: one CPU, one GPU, several GPUs or several nodes, unchanged.

    accelerate launch training/train.py --config configs/tiny.yaml [--key value ...]
    # two CPU processes (gloo): `--cpu` alone makes accelerate start ONE process, so go through --multi_gpu:
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        training/train.py --config configs/tiny.yaml --cpu true        # (or: torchrun --nproc_per_node 2 ...)

The same file runs as a script (above) and as a module (`python -m training.train`, `from training import train`);
as a script it needs the project installed (`pip install -e .`, which scripts/setup.sh does) or on PYTHONPATH.
The loop lives in `training/trainer/loop.py`; outputs in `output_dir`: `model/` (Hub-ready, loadable with
AutoModelForAudioClassification + trust_remote_code), `results.json`, `scores/`, `checkpoints/`,
`logs/train_log.jsonl`, `train_config.yaml`.
"""

from training.trainer.checkpointing import BEST_FILE
from training.trainer.loop import main


__all__ = ["BEST_FILE", "main"]


if __name__ == "__main__":
    main()
