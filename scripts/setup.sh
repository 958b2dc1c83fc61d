#!/usr/bin/env bash
# Set up everything MoLEx needs on a fresh machine, idempotently:
#  - Debian packages listed in scripts/apt-packages*.txt (when run as root and some are missing);
#  - a local virtual environment .venv with the project (editable) and its training, demo and dev extras.
# torch is pinned to 2.13.0 in pyproject.toml: its CPU build installs offline; an unpinned torch pulls GBs of CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=$(cat scripts/apt-packages*.txt 2>/dev/null | sed 's/#.*//' | tr -s ' \n' '\n' | sort -u | grep -v '^$' || true)
missing=""
for package in $packages; do
  dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] apt-get install:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "[setup] missing Debian packages:$missing (run as root, or: sudo apt-get install$missing)" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.molex-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing the project into .venv (about 1-2 minutes the first time)"
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[training,demo,dev,whisper,corpus]" > .venv/pip-install.log 2>&1; then
    grep -v "is ignored: it is neither" .venv/pip-install.log | tail -30 >&2
    echo "[setup] pip install failed (full log: .venv/pip-install.log)" >&2
    exit 1
  fi
  .venv/bin/python -c "import torch, transformers, peft, datasets, accelerate, gradio"
  touch "$stamp"
fi
