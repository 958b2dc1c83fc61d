"""A small synthetic corpus in the ASVspoof 5 layout for training tests: fast to write, no Debian packages.

Bona fide clips are harmonic 'voiced' tones with jitter; each spoof attack is a different synthetic recipe, so a
model can learn something in a few steps. Eval holds one attack seen in training and one never seen (A04).
"""

from pathlib import Path

import numpy as np
import soundfile as sf


ATTACKS = {"train": ["A01", "A02"], "dev": ["A03"], "eval": ["A01", "A04"]}
PREFIX = {"train": ("T", "flac_T", "ASVspoof5.train.tsv"), "dev": ("D", "flac_D", "ASVspoof5.dev.track_1.tsv")}
PREFIX["eval"] = ("E", "flac_E_eval", "ASVspoof5.eval.track_1.tsv")


def _clip(kind: str, rng: np.random.Generator, seconds: float, rate: int = 16_000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    f0 = rng.uniform(100, 220) * (1 + 0.02 * rng.standard_normal(t.size).cumsum() / np.sqrt(t.size))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    if kind == "bonafide":
        wave = sum(np.sin(h * phase) / h for h in range(1, 12))
    elif kind in ("A01", "A03"):
        wave = np.sign(np.sin(phase)) * 0.5  # buzzy square source
    elif kind == "A02":
        wave = np.sin(phase) + 0.3 * rng.standard_normal(t.size)
    else:
        wave = np.sin(3 * phase) * np.sin(phase)  # ring-modulated
    wave = wave / (np.abs(wave).max() + 1e-9) * 0.5
    return (wave + 0.005 * rng.standard_normal(t.size)).astype(np.float32)


def write_synthetic_asvspoof5(root: Path, per_class: int = 6, seconds: float = 0.6, seed: int = 0) -> Path:
    """`per_class` bona fide and `per_class` spoof clips per split (spoofs spread over the split's attacks)."""
    rng = np.random.default_rng(seed)
    for split, (prefix, folder, protocol) in PREFIX.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        lines = []
        for index in range(2 * per_class):
            utt_id = f"{prefix}_{index:010d}"
            speaker = f"{prefix}_{index % 3:04d}"
            if index % 2 == 0:
                kind, line = "bonafide", f"{speaker} {utt_id} F - - - - bonafide bonafide -"
            else:
                kind = ATTACKS[split][(index // 2) % len(ATTACKS[split])]
                line = f"{speaker} {utt_id} M - - - AC1 {kind} spoof -"
            if split == "eval":  # uncoded eval rows carry CODEC_Q 0, as in the release
                parts = line.split()
                parts[4] = "0"
                line = " ".join(parts)
            length = seconds * rng.uniform(0.7, 1.5)
            sf.write(root / folder / f"{utt_id}.flac", _clip(kind, rng, length), 16_000, subtype="PCM_16")
            lines.append(line)
        (root / protocol).write_text("\n".join(lines) + "\n")
    return root


# Train-run arguments of a tiny model (4 experts of rank 4 on the tiny random backbone, 0.5 s crops): a few
# optimizer steps take seconds on CPU.
TINY_RUN = ["--num_experts", "4", "--rank", "4", "--batch_size", "4", "--eval_batch_size", "4"]
TINY_RUN += ["--crop_samples", "8000", "--cpu", "true", "--log_with", "none", "--head_hidden_size", "16"]
TINY_RUN += ["--seed", "3"]


def tiny_run_args(corpus: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["--data_root", str(corpus), "--output_dir", str(output_dir), *TINY_RUN, *extra]
