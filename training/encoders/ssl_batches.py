"""Pretraining batches: the pool held in memory, and one batch per step drawn from (seed, step, rank) alone.

Every random choice of a step (clips, crops, speed, noise, mask spans) comes from a generator seeded with the
step number, so a resumed run draws exactly the batches an uninterrupted run would have drawn, with no RNG state
in the checkpoint. Unreadable clips are counted and listed, or refused with their path (`on_bad_audio`).
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.signal import resample_poly
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

from training.data.audio import AudioDecodeError, load_audio
from training.encoders.ssl_config import SSLPretrainConfig
from training.encoders.ssl_pool import PoolClip


@dataclass
class LoadedPool:
    """Waveforms (int16, to halve memory) of the readable pool clips, and what was left out and why."""

    waves: list[np.ndarray]
    clips: list[PoolClip]
    unreadable: list[str] = field(default_factory=list)
    too_short: int = 0

    def float_wave(self, index: int) -> np.ndarray:
        return self.waves[index].astype(np.float32) / 32767.0


def load_pool(clips: list[PoolClip], min_samples: int, on_bad_audio: str) -> LoadedPool:
    """Decode every pool clip once; a decode failure is skipped and counted, or raised naming the file."""
    pool = LoadedPool([], [])
    for clip in clips:
        try:
            wave = load_audio(clip.file)
        except AudioDecodeError as error:
            if on_bad_audio == "raise":
                raise AudioDecodeError(clip.file, f"unreadable pretraining pool clip ({error})") from error
            pool.unreadable.append(clip.file)
            continue
        if len(wave) < min_samples:
            pool.too_short += 1
            continue
        pool.waves.append(np.round(np.clip(wave, -1, 1) * 32767).astype(np.int16))
        pool.clips.append(clip)
    if not pool.waves:
        raise ValueError(f"no usable pretraining clip among {len(clips)} (unreadable or shorter than {min_samples})")
    return pool


def _coloured_noise(size: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(size))
    freqs = np.maximum(np.fft.rfftfreq(size), 1.0 / size)
    spectrum *= {"white": 1.0, "pink": freqs**-0.5, "brown": freqs**-1.0}[colour]
    noise = np.fft.irfft(spectrum, n=size)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def augmented_crop(wave: np.ndarray, config: SSLPretrainConfig, rng: np.random.Generator) -> np.ndarray:
    """A random crop (at most `crop_samples`), maybe speed-perturbed and noised, normalised to zero mean / unit var."""
    speed = float(rng.choice(config.speed_factors)) if rng.random() < config.speed_prob else 1.0
    span = min(len(wave), int(round(config.crop_samples * speed)))
    start = int(rng.integers(0, len(wave) - span + 1))
    crop = wave[start : start + span].astype(np.float64)
    if speed != 1.0:
        # Played `speed` times faster: resample by 1/speed (tempo and pitch both move, as in Kaldi's perturbation).
        crop = resample_poly(crop, 100, int(round(100 * speed)))
    crop = crop[: config.crop_samples]
    if rng.random() < config.noise_prob:
        snr_db = rng.uniform(*config.noise_snr_db)
        noise = _coloured_noise(crop.size, str(rng.choice(["white", "pink", "brown"])), rng)
        crop = crop + noise * np.sqrt(np.mean(crop**2)) * 10 ** (-snr_db / 20)
    crop = (crop - crop.mean()) / np.sqrt(crop.var() + 1e-7)
    return crop.astype(np.float32)


def step_generator(seed: int, step: int, rank: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, step, rank])


def make_batch(
    pool: LoadedPool, config: SSLPretrainConfig, step: int, num_frames_of, rank: int = 0
) -> dict[str, torch.Tensor]:
    """Crops, attention mask, frame mask and mask spans of one step (zero-padded to the longest crop)."""
    rng = step_generator(config.seed, step, rank)
    # Long recordings are drawn more often (by length, capped at 4 crops), so each second of audio counts.
    lengths = np.array([min(len(w), 4 * config.crop_samples) for w in pool.waves], dtype=np.float64)
    chosen = rng.choice(len(pool.waves), size=config.batch_size, p=lengths / lengths.sum())
    crops = [augmented_crop(pool.float_wave(int(i)), config, rng) for i in chosen]
    longest = max(len(c) for c in crops)
    input_values = torch.zeros(len(crops), longest)
    attention_mask = torch.zeros(len(crops), longest, dtype=torch.long)
    for row, crop in enumerate(crops):
        input_values[row, : len(crop)] = torch.from_numpy(crop)
        attention_mask[row, : len(crop)] = 1
    frames = int(num_frames_of(longest))
    valid = num_frames_of(attention_mask.sum(-1))
    frame_mask = torch.arange(frames)[None, :] < valid[:, None]
    np.random.seed(int(rng.integers(2**31)))  # _compute_mask_indices draws from numpy's global generator
    spans = _compute_mask_indices(
        (len(crops), frames), config.mask_prob, config.mask_length, attention_mask=frame_mask.long(), min_masks=2
    )
    return {
        "input_values": input_values,
        "attention_mask": attention_mask,
        "frame_mask": frame_mask,
        "mask_time_indices": torch.from_numpy(spans) & frame_mask,
        "num_frames": frames,
        "clip_indices": torch.from_numpy(chosen),
    }
