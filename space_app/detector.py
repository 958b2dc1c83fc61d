"""The demo's inference, without any UI: load a MoLEx model once, score an audio file, explain the score.

A clip is decoded with soundfile (any rate, any channel count), averaged to mono and resampled with soxr to the
model's rate. It is then cut into windows of `crop_samples` (the model's training crop) every `hop_samples`; the last
window ends at the clip end, and a clip shorter than one window is repeated up to its length, as in training. Every
window is scored, and the clip's score is the **mean of the window scores**: mean logits -> `detection_score`, which
is linear, so this equals the mean of the per-window scores (an LLR when the model has `config.calibration`).
P(bona fide) = sigmoid(score): the softmax of the mean logits when uncalibrated, the posterior at equal priors when
calibrated. The verdict is "bona fide" when the score is >= 0.

Bad input raises `InputError`, whose message is meant for the user (the UI shows it as is).
"""

import logging
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from routing_novelty import SIGNATURES_FILE, NoveltyResult, RoutingSignatures, clip_novelty, load_routing_signatures
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification


__all__ = [
    "CROP_SAMPLES",
    "DECISION_THRESHOLD",
    "DEFAULT_MODEL_DIRS",
    "MAX_SECONDS",
    "MIN_SECONDS",
    "DetectionResult",
    "Detector",
    "InputError",
    "ModelNotFoundError",
    "default_model",
    "window_starts",
]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
# Where the main job writes its model, newest layout first (relative to the repository root or the working dir).
DEFAULT_MODEL_DIRS = ("outputs/main/model", "outputs/quickstart/model")
# Window length: MOLEX_CROP_SAMPLES if set, else the crop the model was trained on (its config's crop_samples).
CROP_SAMPLES = int(os.environ["MOLEX_CROP_SAMPLES"]) if os.environ.get("MOLEX_CROP_SAMPLES") else None
MIN_SECONDS = 0.1
MAX_SECONDS = float(os.environ.get("MOLEX_MAX_SECONDS", 120.0))
DECISION_THRESHOLD = 0.0  # score >= 0: bona fide (equal priors and costs)
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
        f"no MoLEx model found in {' or '.join(DEFAULT_MODEL_DIRS)} (under {REPO_ROOT} or the working directory). "
        "Run the main job first (bash scripts/main.sh), or set MOLEX_MODEL=<model folder or Hub id> "
        "(or pass --model)."
    )


def window_starts(num_samples: int, crop_samples: int, hop_samples: int) -> list[int]:
    """Start of each window: every `hop_samples`, plus a last one that ends at the clip end; [0] for short clips."""
    if num_samples <= crop_samples:
        return [0]
    starts = list(range(0, num_samples - crop_samples + 1, hop_samples))
    if starts[-1] != num_samples - crop_samples:
        starts.append(num_samples - crop_samples)
    return starts


@dataclass(frozen=True)
class DetectionResult:
    """Everything the UI shows and the API returns for one clip. Scores: higher = more bona fide."""

    verdict: str  # "bona fide" or "spoof"
    score: float  # clip score: mean of window_scores; an LLR when calibrated
    calibrated: bool
    probabilities: dict[str, float]  # {"bonafide": p, "spoof": 1 - p}
    duration_s: float
    file_sampling_rate: int
    channels: int
    window_seconds: float
    window_starts_s: list[float]
    window_scores: list[float]
    router_names: list[str]
    expert_usage: list[list[float]]  # (routers, experts): share of windows that routed to each expert
    novelty: NoveltyResult | None  # None when the model has no routing signatures

    def to_dict(self) -> dict:
        return asdict(self)


class Detector:
    """A MoLEx model loaded once, scoring files one at a time (safe to call from several threads).

    Args:
        model: a model folder (e.g. the main job's `outputs/main/model`) or a Hub repo id.
        crop_samples: window length in samples at the model's rate; default: the model's training crop
            (`config.crop_samples`, 64,600 = 4.04 s when the config predates that field).
        hop_samples: hop between windows; defaults to half a window.
        max_seconds: longer files are refused before decoding (memory and waiting time are bounded).
    """

    def __init__(
        self,
        model: str,
        crop_samples: int | None = CROP_SAMPLES,
        hop_samples: int | None = None,
        max_seconds: float = MAX_SECONDS,
    ):
        self.model_name = model
        self.model = AutoModelForAudioClassification.from_pretrained(model, trust_remote_code=True).eval()
        if crop_samples is None:
            crop_samples = int(getattr(self.model.config, "crop_samples", 64_600))
        if crop_samples <= 0 or (hop_samples is not None and hop_samples <= 0) or max_seconds < MIN_SECONDS:
            raise ValueError(
                f"crop_samples and hop_samples must be > 0 and max_seconds >= {MIN_SECONDS}, got "
                f"{crop_samples}, {hop_samples}, {max_seconds}"
            )
        self.feature_extractor = AutoFeatureExtractor.from_pretrained(model)
        self.sampling_rate = int(self.model.config.sampling_rate)
        self.crop_samples = crop_samples
        self.hop_samples = hop_samples or max(1, crop_samples // 2)
        self.max_seconds = max_seconds
        self.router_names = list(self.model.router_names)
        self.num_experts = self.model.config.adapter.num_experts
        self.top_k = self.model.config.adapter.top_k
        self.signatures = self._load_signatures(model)
        # The model records routing in one shared per-model context, so forwards must not overlap.
        self._lock = threading.Lock()

    @property
    def calibrated(self) -> bool:
        return self.model.config.calibration is not None

    def _load_signatures(self, model: str) -> RoutingSignatures | None:
        path = Path(model) / SIGNATURES_FILE
        if not Path(model).is_dir():
            path = _hub_file(model, SIGNATURES_FILE)
        if path is None or not path.is_file():
            return None
        signatures = load_routing_signatures(path)
        expected = len(self.router_names) * self.num_experts
        if signatures.size != expected:
            raise ValueError(
                f"{path}: signatures have {signatures.size} values but this model has "
                f"{len(self.router_names)} routers x {self.num_experts} experts = {expected}"
            )
        if signatures.top_k not in (None, self.top_k):
            raise ValueError(f"{path}: top_k is {signatures.top_k} but this model routes to top_k={self.top_k}")
        if signatures.router_names not in (None, self.router_names):
            raise ValueError(
                f"{path}: router_names {signatures.router_names} differ from the model's {self.router_names}"
            )
        return signatures

    def read_audio(self, path: str | os.PathLike | None) -> tuple[np.ndarray, int, int, float]:
        """(mono waveform at the model's rate, file rate, channels, duration in s); `InputError` when unusable."""
        if path is None or not str(path):
            raise InputError("No audio: upload a file or record a clip, then press Detect.")
        name = Path(path).name
        if not Path(path).is_file():
            raise InputError(f"{name}: file not found.")
        if Path(path).stat().st_size == 0:
            raise InputError(f"{name} is empty (0 bytes).")
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError, OSError, ValueError):
            raise InputError(
                f"{name} is not an audio file this demo can read (supported: WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF)."
            ) from None
        if info.frames <= 0 or info.samplerate <= 0:
            raise InputError(f"{name} holds no audio samples.")
        duration = info.frames / info.samplerate
        if duration < MIN_SECONDS:
            raise InputError(f"{name} is {duration:.3f} s long; at least {MIN_SECONDS} s of audio is needed.")
        if duration > self.max_seconds:
            raise InputError(
                f"{name} is {duration:.1f} s long; this demo scores clips of up to {self.max_seconds:g} s. "
                "Trim it, or raise the limit with MOLEX_MAX_SECONDS / --max_seconds."
            )
        try:
            data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError, ValueError):
            raise InputError(f"{name} could not be decoded: the file looks damaged.") from None
        wave = data.mean(axis=1)
        if wave.size == 0:
            raise InputError(f"{name} holds no audio samples.")
        if not np.isfinite(wave).all():
            raise InputError(f"{name} contains invalid (NaN or infinite) samples.")
        if file_rate != self.sampling_rate:
            wave = soxr.resample(wave, file_rate, self.sampling_rate, quality="HQ")
        return np.ascontiguousarray(wave, dtype=np.float32), int(file_rate), int(info.channels), duration

    def windows(self, wave: np.ndarray) -> tuple[list[int], list[np.ndarray]]:
        """Window starts (samples) and the windows themselves; a short clip is tiled up to one window."""
        if wave.size < self.crop_samples:
            return [0], [np.tile(wave, -(-self.crop_samples // wave.size))[: self.crop_samples]]
        starts = window_starts(wave.size, self.crop_samples, self.hop_samples)
        return starts, [wave[start : start + self.crop_samples] for start in starts]

    def predict(self, path: str | os.PathLike | None) -> DetectionResult:
        """Score one audio file. Raises `InputError` (a user-facing message) for input that cannot be scored."""
        wave, file_rate, channels, duration = self.read_audio(path)
        starts, windows = self.windows(wave)
        logits, usage = [], []
        with self._lock, torch.inference_mode():
            for first in range(0, len(windows), BATCH_WINDOWS):
                batch = windows[first : first + BATCH_WINDOWS]
                inputs = self.feature_extractor(batch, sampling_rate=self.sampling_rate, return_tensors="pt")
                output = self.model(**inputs)
                logits.append(output.logits.float())
                usage.append(output.expert_usage.float())
            logits, usage = torch.cat(logits), torch.cat(usage)
            window_scores = self.model.detection_score(logits).float()
            score = float(self.model.detection_score(logits.mean(0, keepdim=True))[0])
        probability = float(torch.sigmoid(torch.tensor(score)))
        mean_usage = usage.mean(0).numpy()
        return DetectionResult(
            verdict="bona fide" if score >= DECISION_THRESHOLD else "spoof",
            score=score,
            calibrated=self.calibrated,
            probabilities={"bonafide": float(probability), "spoof": float(1.0 - probability)},
            duration_s=float(duration),
            file_sampling_rate=file_rate,
            channels=channels,
            window_seconds=self.crop_samples / self.sampling_rate,
            window_starts_s=[start / self.sampling_rate for start in starts],
            window_scores=window_scores.tolist(),
            router_names=self.router_names,
            expert_usage=mean_usage.tolist(),
            novelty=clip_novelty(usage.numpy(), self.signatures, self.top_k) if self.signatures is not None else None,
        )


def _hub_file(repo_id: str, filename: str) -> Path | None:
    """A file of a Hub model repo, or None when the repo has no such file or the Hub cannot be reached."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, filename))
    except Exception as error:  # absent file, offline mode, no network: the indicator is optional
        logger.info("no %s for %s (%s): novel-attack indicator off", filename, repo_id, type(error).__name__)
        return None
