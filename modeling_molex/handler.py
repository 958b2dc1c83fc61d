"""Hugging Face Inference Endpoints handler: `handler.py` at the root of every saved or pushed MoLEx folder.

Inference Endpoints (and the huggingface-inference-toolkit) import this file on its own, construct
`EndpointHandler(path=<model folder>)` once, and call it per request with the decoded body:

    {"inputs": <audio file bytes, or the same bytes base64-encoded (a data: URL too)>,
     "parameters": {"calibrate": bool, "flag_silence": bool, "silence_dbfs": float, "batch_size": int,
                    "max_seconds": float}}  # every parameter optional

A request sent with an `audio/*` content type reaches the handler as `{"inputs": <bytes>}`. The answer holds the
fields of `WaveformScore.to_dict()` (score, bonafide_probability, verdict, silent, window_starts, window_scores,
expert_usage, novelty, ...); a value JSON cannot carry (the -inf dBFS level of digital silence) is null.

The audio goes through the model's one decoding and scoring path (`model.score_file`: soundfile, else ffmpeg, then
`score_waveforms`) from a private temporary file, so WAV, FLAC, OGG/Opus, MP3 and, with ffmpeg, WebM and M4A all
work. Audio longer than `max_seconds` is refused: the handler's limit is `MOLEX_MAX_SECONDS` (environment) or 600 s,
and a request may only lower it. Every bad request raises ValueError naming the field (`inputs`,
`parameters.batch_size`, ...), which the toolkit returns to the client as a 400 answer.

Shipped as remote code, imported as a lone file: only the standard library, torch and transformers.
"""

import base64
import binascii
import math
import os
import tempfile

import torch
from transformers import AutoModelForAudioClassification


DEFAULT_MAX_SECONDS = 600.0
MAX_BATCH_SIZE = 64
BOOLEAN_PARAMETERS = ("calibrate", "flag_silence")


def _audio_bytes(inputs) -> bytes:
    if isinstance(inputs, bytes | bytearray | memoryview):
        data = bytes(inputs)
    elif isinstance(inputs, str):
        text = inputs.strip()
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]  # data:audio/wav;base64,....
        try:
            data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("inputs: a string must be base64-encoded audio file bytes; this one is not") from None
    else:
        raise ValueError(f"inputs: expected audio file bytes or a base64 string, got {type(inputs).__name__}")
    if not data:
        raise ValueError("inputs: empty (no audio bytes)")
    return data


def _number(name: str, value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"parameters.{name}: expected a finite number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"parameters.{name}: must be in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _json_ready(value):
    """`value` with non-finite floats (JSON has no -Infinity) replaced by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_ready(item) for item in value]
    return value


class EndpointHandler:
    """Score one audio clip per request with the MoLEx model in `path` (default: this file's folder)."""

    def __init__(self, path: str = "", max_seconds: float | None = None):
        folder = path or os.path.dirname(os.path.abspath(__file__))
        self.max_seconds = float(max_seconds or os.environ.get("MOLEX_MAX_SECONDS") or DEFAULT_MAX_SECONDS)
        if not math.isfinite(self.max_seconds) or self.max_seconds <= 0:
            raise ValueError(f"max_seconds (or MOLEX_MAX_SECONDS) must be a positive number, got {self.max_seconds}")
        self.model = AutoModelForAudioClassification.from_pretrained(folder, trust_remote_code=True).eval()
        self.model.to("cuda" if torch.cuda.is_available() else "cpu")

    def parameters(self, given) -> dict:
        """The validated keyword arguments of `score_file` for a request's `parameters` (ValueError naming one)."""
        if given is None:
            given = {}
        if not isinstance(given, dict):
            raise ValueError(f"parameters: expected an object, got {type(given).__name__}")
        options = {"max_seconds": self.max_seconds}
        for name, value in given.items():
            if name in BOOLEAN_PARAMETERS:
                if not isinstance(value, bool):
                    raise ValueError(f"parameters.{name}: expected true or false, got {value!r}")
                options[name] = value
            elif name == "batch_size":
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH_SIZE:
                    raise ValueError(f"parameters.batch_size: expected an integer in [1, {MAX_BATCH_SIZE}], got "
                                     f"{value!r}")  # fmt: skip
                options[name] = value
            elif name == "silence_dbfs":
                options[name] = _number(name, value, -200.0, 0.0)
            elif name == "max_seconds":
                options[name] = _number(name, value, 0.1, self.max_seconds)
            else:
                accepted = ", ".join((*BOOLEAN_PARAMETERS, "batch_size", "silence_dbfs", "max_seconds"))
                raise ValueError(f"parameters.{name}: unknown parameter (accepted: {accepted})")
        return options

    def __call__(self, data: dict) -> dict:
        if not isinstance(data, dict) or "inputs" not in data:
            raise ValueError("inputs: the request must be an object with an `inputs` field (audio bytes or base64)")
        audio = _audio_bytes(data["inputs"])
        options = self.parameters(data.get("parameters"))
        with tempfile.TemporaryDirectory(prefix="molex-request-") as folder:
            path = os.path.join(folder, "request-audio")
            with open(path, "wb") as handle:
                handle.write(audio)
            try:
                result = self.model.score_file(path, **options)
            except ValueError as error:  # AudioInputError: named after the temporary file, never a server path
                raise ValueError(f"inputs: {error}") from None
        return _json_ready(result.to_dict())
