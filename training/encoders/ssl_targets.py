"""Masked-prediction targets: frame features aligned with the encoder's frames, and their k-means codebooks.

Frame i of the targets is the 25 ms window starting at sample 320 * i, i.e. exactly where the encoder's frame i
starts (its CNN strides multiply to 320), so target i and hidden state i describe the same audio.

Why two kinds of features: MFCC clusters (the probe's choice) encode the smoothed spectral envelope, which an MFCC
linear model already has; 64-band log-mel below 4 kHz resolves the low harmonics and the noise floor between them,
where vocoders and codecs leave their traces. The k-means uses scipy's `kmeans2` (k-means++ initialisation).
"""

import numpy as np
import torch
from scipy.cluster.vq import kmeans2
from scipy.fft import dct

from training.encoders.ssl_config import CodebookSpec


SAMPLING_RATE = 16_000
FRAME_HOP, FRAME_WINDOW, N_FFT = 320, 400, 512
MEL_RANGE_HZ = (100.0, 4000.0)  # everything in the corpus went through an 8 kHz channel


def mel_filterbank(num_bands: int, n_fft: int = N_FFT, rate: int = SAMPLING_RATE) -> torch.Tensor:
    """(n_fft // 2 + 1, num_bands) triangular filters, equally spaced on the mel scale over MEL_RANGE_HZ."""
    low, high = (2595 * np.log10(1 + f / 700) for f in MEL_RANGE_HZ)
    edges = 700 * (10 ** (np.linspace(low, high, num_bands + 2) / 2595) - 1)
    freqs = np.fft.rfftfreq(n_fft, 1 / rate)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    weights = np.maximum(0, np.minimum((freqs - left) / (centre - left), (right - freqs) / (right - centre)))
    return torch.from_numpy(weights.T.astype(np.float32))


def frame_power(waves: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B, num_frames, N_FFT // 2 + 1) power spectra of Hann-windowed 25 ms frames every 20 ms."""
    needed = (num_frames - 1) * FRAME_HOP + FRAME_WINDOW
    if waves.shape[1] < needed:
        waves = torch.nn.functional.pad(waves, (0, needed - waves.shape[1]))
    frames = waves[:, :needed].unfold(1, FRAME_WINDOW, FRAME_HOP)
    window = torch.hann_window(FRAME_WINDOW, periodic=False, dtype=waves.dtype)
    return torch.fft.rfft(frames * window, n=N_FFT).abs().pow(2)


def frame_features(waves: torch.Tensor, num_frames: int, spec: CodebookSpec) -> torch.Tensor:
    """(B, num_frames, D) features of one codebook's kind (log-mel: D = dims; MFCC: D = 3 * dims with deltas)."""
    power = frame_power(waves.float(), num_frames)
    if spec.features == "logmel":
        return torch.log(power @ mel_filterbank(spec.dims) + 1e-8)
    logmel = torch.log(power @ mel_filterbank(40) + 1e-8)
    basis = torch.from_numpy(dct(np.eye(40), type=2, norm="ortho", axis=0)[: spec.dims].T.astype(np.float32))
    cepstrum = logmel @ basis
    delta = torch.gradient(cepstrum, dim=1)[0] if num_frames > 1 else torch.zeros_like(cepstrum)
    delta2 = torch.gradient(delta, dim=1)[0] if num_frames > 1 else torch.zeros_like(cepstrum)
    return torch.cat([cepstrum, delta, delta2], dim=-1)


class Codebook:
    """Standardisation + k-means centroids of one target set; `assign` maps frames to cluster ids."""

    def __init__(self, spec: CodebookSpec, mean: torch.Tensor, std: torch.Tensor, centroids: torch.Tensor):
        self.spec, self.mean, self.std, self.centroids = spec, mean, std, centroids

    def assign(self, waves: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(B, num_frames) long cluster ids of the frames of `waves` (B, T)."""
        features = (frame_features(waves, num_frames, self.spec) - self.mean) / self.std
        flat = features.reshape(-1, features.shape[-1])
        return torch.cdist(flat, self.centroids).argmin(dim=-1).reshape(features.shape[:2])

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.mean": self.mean, f"{prefix}.std": self.std, f"{prefix}.centroids": self.centroids}

    @classmethod
    def from_tensors(cls, spec: CodebookSpec, tensors: dict[str, torch.Tensor], prefix: str) -> "Codebook":
        return cls(spec, tensors[f"{prefix}.mean"], tensors[f"{prefix}.std"], tensors[f"{prefix}.centroids"])


def fit_codebook(spec: CodebookSpec, waves: list[np.ndarray], max_frames: int, iterations: int, seed: int) -> Codebook:
    """k-means over (a seeded sample of) the frames of `waves`, after per-dimension standardisation."""
    chunks = []
    for wave in waves:
        num_frames = max(0, (len(wave) - FRAME_WINDOW) // FRAME_HOP + 1)
        if num_frames:
            chunks.append(frame_features(torch.from_numpy(wave[None].astype(np.float32)), num_frames, spec)[0])
    if not chunks:
        raise ValueError("no clip is long enough for one 25 ms frame: cannot fit a codebook")
    frames = torch.cat(chunks)
    rng = np.random.default_rng(seed)
    if len(frames) > max_frames:
        frames = frames[torch.from_numpy(np.sort(rng.choice(len(frames), max_frames, replace=False)))]
    if len(frames) < spec.clusters:
        raise ValueError(f"{len(frames)} frames are fewer than the {spec.clusters} clusters asked for")
    mean, std = frames.mean(0), frames.std(0) + 1e-5
    data = ((frames - mean) / std).double().numpy()
    # scipy's k-means++ costs O(k^2 N): seed it on a subsample, then run Lloyd's iterations on every frame.
    seeds = data[rng.choice(len(data), min(len(data), 20 * spec.clusters), replace=False)]
    initial, _ = kmeans2(seeds, spec.clusters, iter=1, minit="++", seed=rng)
    centroids, _ = kmeans2(data, initial, iter=iterations, minit="matrix")
    return Codebook(spec, mean, std, torch.from_numpy(centroids.astype(np.float32)))


def target_entropy(labels: torch.Tensor, clusters: int) -> float:
    """Unigram entropy (nats) of cluster ids: the loss of a model that ignores the audio."""
    counts = torch.bincount(labels.flatten(), minlength=clusters).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())
