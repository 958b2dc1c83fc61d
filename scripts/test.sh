#!/usr/bin/env bash
# Set up (see scripts/setup.sh) and run the whole test suite offline. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python -m pytest -q "$@"
