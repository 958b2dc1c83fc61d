#!/usr/bin/env bash
# Set up (see scripts/setup.sh) and run the main job on its embedded default: build a tiny MoLEx model, score a
# generated clip, print the verdict and which experts fired, save a Hub-ready folder and reload it as remote code.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
exec .venv/bin/python -m training.quickstart "$@"
