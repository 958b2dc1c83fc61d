"""`pipeline("audio-classification", model=MOLEX_REPO, trust_remote_code=True)` for MoLEx: the model's own scoring
path (windows, calibration, channel choice) instead of one forward over the whole clip.

`config.json` names this class under `custom_pipelines`, so transformers loads it from the model repo. Inputs: a
file path or bytes (decoded like `score_file`: soundfile, else ffmpeg), a numpy array / torch tensor at the model's
rate, or `{"array" (or "raw"): ..., "sampling_rate": ...}` at any rate (resampled with soxr). Output, as for every
audio-classification pipeline: `[{"label": "bonafide" | "spoof", "score": probability}]`, highest first, where
P(bona fide) = sigmoid(calibrated clip score). `return_details=True` adds `{"details": WaveformScore}`. Near-silent
input raises ValueError (there is no verdict to give).
"""

import os
import tempfile

import numpy as np
from transformers import AudioClassificationPipeline

from .audio_io import AudioInputError


class _Scored:
    """Holds the result past the pipeline's device mover, which would rebuild a ModelOutput as a plain one."""

    def __init__(self, result):
        self.result = result


class MoLExAudioClassificationPipeline(AudioClassificationPipeline):
    """Audio classification through `model.score_waveform`: long input is scored in windows, batched."""

    def _sanitize_parameters(self, top_k=None, function_to_apply=None, return_details=False, window_batch_size=8):
        if function_to_apply not in (None, "sigmoid"):
            raise ValueError("MoLEx pipelines report P = sigmoid(calibrated score); `function_to_apply` must be unset")
        _, _, postprocess = super()._sanitize_parameters(top_k=top_k)
        postprocess["return_details"] = return_details
        return {}, {"window_batch_size": window_batch_size}, postprocess

    def preprocess(self, inputs):
        if isinstance(inputs, str | os.PathLike) and not str(inputs).startswith(("http://", "https://")):
            wave, rate = self.model.read_audio(inputs)
            return {"wave": wave, "sampling_rate": rate, "name": os.path.basename(os.fspath(inputs))}
        if isinstance(inputs, bytes):
            with tempfile.NamedTemporaryFile(suffix=".audio") as handle:  # ffmpeg and soundfile both read files
                handle.write(inputs)
                handle.flush()
                wave, rate = self.model.read_audio(handle.name)
            return {"wave": wave, "sampling_rate": rate, "name": "bytes input"}
        if isinstance(inputs, dict):
            if "sampling_rate" not in inputs or not ("array" in inputs or "raw" in inputs):
                raise ValueError('a dict input needs "array" (or "raw") and "sampling_rate"')
            wave = inputs["raw"] if "raw" in inputs else inputs["array"]
            return {"wave": wave, "sampling_rate": int(inputs["sampling_rate"]), "name": "array input"}
        if hasattr(inputs, "detach") or isinstance(inputs, np.ndarray):
            return {"wave": inputs, "sampling_rate": int(self.model.config.sampling_rate), "name": "array input"}
        raise TypeError(f"expected a file path, bytes, an array or a dict with 'array' and 'sampling_rate', "
                        f"got {type(inputs).__name__}")  # fmt: skip

    def _forward(self, model_inputs, window_batch_size: int = 8):
        result = self.model.score_waveform(
            model_inputs["wave"],
            model_inputs["sampling_rate"],
            batch_size=window_batch_size,
            names=[model_inputs["name"]],
        )
        if result.silent:
            raise AudioInputError(
                f"{model_inputs['name']} is near-silent ({result.level_dbfs:.1f} dBFS): there is no speech to judge"
            )
        return _Scored(result)

    def postprocess(self, model_outputs, top_k: int = 2, return_details: bool = False, **kwargs):
        result = model_outputs.result
        probability = result.bonafide_probability
        labels = sorted([("bonafide", probability), ("spoof", 1.0 - probability)], key=lambda pair: -pair[1])
        output = [{"label": label, "score": score} for label, score in labels[:top_k]]
        if return_details:
            output.append({"details": result})
        return output
