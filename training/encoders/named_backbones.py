"""Backbone names that the project resolves itself, offline, into a local folder.

A config's `backbone` is a Hub id, a local folder, or one of these names:
- `tiny-random`: a tiny randomly initialised wav2vec2, built into the run's output folder (demos and tests);
- `whisper-tiny.en`, `whisper-base`: OpenAI's Whisper from the pinned PyPI packages (`whisper` extra), converted
  once into the cache folder (`training.encoders.import_whisper`; `$MOLEX_CACHE/encoders` or `outputs/encoders`).

Why a name and not the cached folder's path in the configs: the folder does not exist on a fresh clone, and its
place depends on `$MOLEX_CACHE`; the name says what the weights are and resolves the same everywhere.
"""

import os
import shutil
import tempfile
from pathlib import Path

from training.encoders.import_whisper import default_whisper_folder, ensure_whisper_folder
from training.encoders.tiny_random import build_tiny_backbone
from training.encoders.whisper_packages import WHISPER_WEIGHTS
from training.trainer.config import TINY_RANDOM_BACKBONE


PACKAGED_WHISPER = {"whisper-tiny.en": "tiny.en", "whisper-base": "base"}
NAMED_BACKBONES = (TINY_RANDOM_BACKBONE, *PACKAGED_WHISPER)


def named_backbone_folder(backbone: str, output_dir: str | Path) -> str | None:
    """Where a named backbone lives once resolved (None for a Hub id or a folder); builds nothing."""
    if backbone == TINY_RANDOM_BACKBONE:
        return str(Path(output_dir) / "tiny_backbone")
    if backbone in PACKAGED_WHISPER:
        return str(default_whisper_folder(PACKAGED_WHISPER[backbone]))
    return None


def published_backbone_name(backbone: str) -> str | None:
    """The name a model trained on this backbone should record (config, model card, each expert's PEFT
    `base_model_name_or_path`): the Hub original that the packaged Whisper weights copy, so that a published model
    names what it was built on rather than this machine's cache folder; None for other backbones (their folder or Hub
    id is recorded as given)."""
    if backbone in PACKAGED_WHISPER:
        return WHISPER_WEIGHTS[PACKAGED_WHISPER[backbone]].hub_id
    return None


def resolve_named_backbone(backbone: str, output_dir: str | Path, seed: int = 0) -> str:
    """The local folder for a named backbone, built or converted here unless it is complete already; any other
    value (a Hub id or a folder) is returned unchanged. Both are staged in a hidden sibling and renamed, so a run
    killed meanwhile leaves no half-written folder. Training calls it on one process per node
    (`run_setup.build_model`)."""
    if backbone == TINY_RANDOM_BACKBONE:
        folder = Path(output_dir) / "tiny_backbone"
        if not (folder / "config.json").is_file():
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging = tempfile.mkdtemp(prefix=".tiny_backbone-", dir=folder.parent)
            try:
                build_tiny_backbone(staging, seed)
                os.replace(staging, folder)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return str(folder)
    if backbone in PACKAGED_WHISPER:
        return str(ensure_whisper_folder(PACKAGED_WHISPER[backbone]))
    return backbone
