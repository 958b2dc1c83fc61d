#!/usr/bin/env bash
# Set up (see scripts/setup.sh), then run the main job on its embedded default (configs/tiny.yaml), offline on CPU:
# build the mini corpus -> MFCC baseline -> train a small MoLEx -> score dev and eval (known vs unseen attacks) once
# -> expert-usage analysis -> results table; leaves outputs/main/model, the folder the demo serves.
# Extra arguments go to python -m training.main_job (e.g. --config, --output_dir, --train_args --max_steps 20).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
exec .venv/bin/python -m training.main_job "$@"
