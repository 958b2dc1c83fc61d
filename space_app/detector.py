"""The demo's model: any MoLEx repo id or folder, loaded once through AutoModel + remote code, and the one call
that scores a file (`model.score_file`, the model's own scoring path, shared with the pipeline, the CLI and the
evaluation). This file only finds the model and turns the model's input errors into messages for the page.
"""

import math
import os
from pathlib import Path

from transformers import AutoModelForAudioClassification


__all__ = ["DEFAULT_MODEL_DIRS", "MAX_SECONDS", "Detector", "InputError", "ModelNotFoundError", "default_model"]

REPO_ROOT = Path(__file__).resolve().parent.parent
# Where the main job writes its model (relative to the repository root or the working dir).
DEFAULT_MODEL_DIRS = ("outputs/main/model",)
MAX_SECONDS = float(os.environ.get("MOLEX_MAX_SECONDS", 120.0))
BATCH_WINDOWS = 8  # windows per forward pass: bounds memory on long clips


class InputError(ValueError):
    """Audio the demo cannot score; the message is written for the person who uploaded it."""


class ModelNotFoundError(FileNotFoundError):
    """No model given and none of the default folders exists."""


def default_model() -> str:
    """`MOLEX_MODEL` if set, else the first of `DEFAULT_MODEL_DIRS` that holds a model."""
    if os.environ.get("MOLEX_MODEL"):
        return os.environ["MOLEX_MODEL"]
    for relative in DEFAULT_MODEL_DIRS:
        for base in (REPO_ROOT, Path.cwd()):
            if (base / relative / "config.json").is_file():
                return str(base / relative)
    raise ModelNotFoundError(
        f"no MoLEx model found in {' or '.join(DEFAULT_MODEL_DIRS)} (under the repository root or the working "
        "directory). Run the main job first (bash scripts/main.sh), or set MOLEX_MODEL=<model folder or Hub id> "
        "(or pass --model)."
    )


def display_name(model: str) -> str:
    """What the page may show of the model: a Hub id as is, a local folder by its name only (no server paths)."""
    return Path(model).name if os.path.isdir(model) else model


class Detector:
    """A MoLEx model loaded once, scoring files (one instance serves many threads: no state between calls).

    Args:
        model: a model folder (e.g. the main job's `outputs/main/model`) or a Hub repo id.
        max_seconds: longer files are refused from their header, before decoding, and no file decodes past it (the
            model's bounded decoder), so each request's memory is bounded by it; with at most
            `default_concurrency_limit` requests at once (app.py), so is the server's.
    """

    def __init__(self, model: str, max_seconds: float = MAX_SECONDS):
        if isinstance(max_seconds, bool) or not isinstance(max_seconds, int | float) or not 0 < max_seconds < math.inf:
            raise ValueError(f"max_seconds must be a finite number > 0 (seconds), got {max_seconds!r}")
        self.model_name = display_name(model)
        self.model = AutoModelForAudioClassification.from_pretrained(model, trust_remote_code=True).eval()
        self.max_seconds = max_seconds
        self.window_seconds = self.model.config.crop_samples / self.model.config.sampling_rate
        self.model.routing_signatures()  # a malformed or mismatched signatures file stops the start, not a request

    def predict(self, path: str | os.PathLike | None):
        """Score one audio file -> the model's `WaveformScore`. Raises `InputError` (a user-facing message)."""
        if path is None or not str(path):
            raise InputError("No audio: upload a file or record a clip, then press Detect.")
        try:
            return self.model.score_file(path, max_seconds=self.max_seconds, batch_size=BATCH_WINDOWS)
        except ValueError as error:
            if type(error).__name__ != "AudioInputError":  # the remote module's own class: match it by name
                raise
            raise InputError(f"{error}.") from None
