"""The bar to beat on the mini corpus: utterance mean+std of MFCC / log-mel features + logistic regression.

    python -m training.baselines.mfcc CORPUS_DIR [--features mfcc,logmel] [--out results.json]

Why: a learned detector that cannot beat a linear model on frame-statistics is not learning anything useful, and
if this baseline is near 0 % EER the corpus has a shortcut. ``--features nuisance`` is that shortcut detector
(duration, crest factor, level percentiles, out-of-band energy): on a healthy corpus it should stay near 40-50 %.

The corpus is read with ``training.data.loaders.load_asvspoof5`` (so the real loader is exercised end to end), the model
is trained on train, and EER (via ``training.metrics.asvspoof_metrics``) is reported on dev, on eval pooled, and on eval split into
*known* attacks (eval labels that reuse a training method) and *unseen* attacks. numpy/scipy only.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from datasets import DatasetDict
from scipy.fft import dct
from scipy.signal import stft
from transformers.audio_utils import mel_filter_bank

from training.corpus.attacks import ATTACK_BY_LABEL
from training.data.audio import load_audio
from training.data.loaders import audio_paths, load_asvspoof5
from training.metrics.asvspoof_metrics import compute_metrics
from training.metrics.calibration import fit_logistic_regression


FEATURE_SETS = ("mfcc", "logmel", "nuisance")
RATE, N_FFT, HOP, N_MELS, N_MFCC = 16000, 512, 160, 40, 20
# HTK mel, triangles over the FFT bins, unnormalised: (N_MELS, N_FFT // 2 + 1)
MEL_BANK = mel_filter_bank(N_FFT // 2 + 1, N_MELS, 0.0, RATE / 2, RATE, norm=None, mel_scale="htk").T


def log_mel(wave: np.ndarray) -> np.ndarray:
    """(frames, 40) log mel energies from 32 ms Hann frames every 10 ms."""
    power = np.abs(stft(wave, fs=RATE, nperseg=N_FFT, noverlap=N_FFT - HOP, boundary=None)[2]) ** 2
    return np.log(MEL_BANK @ power + 1e-10).T


def mfcc_features(wave: np.ndarray) -> np.ndarray:
    """MFCC 1-19 with deltas and delta-deltas, mean and std over frames (114 values)."""
    cepstra = dct(log_mel(wave), type=2, norm="ortho", axis=1)[:, 1:N_MFCC]
    delta = np.gradient(cepstra, axis=0)
    stacked = np.concatenate([cepstra, delta, np.gradient(delta, axis=0)], axis=1)
    return np.concatenate([stacked.mean(axis=0), stacked.std(axis=0)])


def logmel_features(wave: np.ndarray) -> np.ndarray:
    frames = log_mel(wave)
    return np.concatenate([frames.mean(axis=0), frames.std(axis=0)])


def nuisance_features(wave: np.ndarray) -> np.ndarray:
    """Cues that should NOT separate the classes: length, peakiness, level distribution, out-of-band energy."""
    frames = wave[: wave.size // HOP * HOP].reshape(-1, HOP)
    energy_db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    spectrum = np.abs(np.fft.rfft(wave)) ** 2
    freqs = np.fft.rfftfreq(wave.size, 1 / RATE)
    total = spectrum.sum() + 1e-12
    crest = np.abs(wave).max() / (np.sqrt(np.mean(wave**2)) + 1e-12)
    bands = [spectrum[freqs < 100].sum() / total, spectrum[freqs > 4200].sum() / total]
    return np.array([wave.size / RATE, crest, *np.percentile(energy_db, [5, 25, 50, 75, 95]), *np.log10(bands)])


EXTRACTORS = {"mfcc": mfcc_features, "logmel": logmel_features, "nuisance": nuisance_features}


def features(paths: list[str], sets: list[str]) -> np.ndarray:
    rows = []
    for path in paths:
        wave = load_audio(path, RATE).astype(np.float64)
        rows.append(np.concatenate([EXTRACTORS[name](wave) for name in sets]))
    return np.stack(rows)


def summarise(scores: np.ndarray, labels: np.ndarray, attacks: np.ndarray, keep: np.ndarray) -> dict:
    """Metrics on bona fide plus the spoofs selected by ``keep``, with trial counts."""
    chosen = (labels == 1) | keep
    metrics = compute_metrics(scores[chosen], labels[chosen])
    spoofs = sorted(set(attacks[chosen & (labels == 0)]))
    return {
        **metrics,
        "n_bonafide": int((labels == 1).sum()),
        "n_spoof": int((chosen & (labels == 0)).sum()),
        "attacks": spoofs,
    }


def fit_and_score(corpus: str | Path, feature_sets: list[str], l2: float = 1.0) -> tuple[DatasetDict, dict, int]:
    """Features of every split, standardised with train's statistics, a logistic regression fit on all of train:
    (the corpus's splits, scores per split, number of fitted parameters). The comparison runner scores with it too."""
    unknown = [name for name in feature_sets if name not in FEATURE_SETS]
    if unknown or not feature_sets:
        raise ValueError(f"--features must be a comma list of {FEATURE_SETS}, got {feature_sets}")
    data = load_asvspoof5(corpus, splits=("train", "dev", "eval"))
    matrices = {split: features(audio_paths(data[split]), feature_sets) for split in data}
    mean, std = matrices["train"].mean(axis=0), matrices["train"].std(axis=0) + 1e-8
    weights, bias = fit_logistic_regression((matrices["train"] - mean) / std, np.asarray(data["train"]["label"]), l2)
    scores = {split: (m - mean) / std @ weights + bias for split, m in matrices.items()}
    return data, scores, int(weights.size + 1)


def run_baseline(corpus: str | Path, feature_sets: list[str], l2: float = 1.0) -> dict:
    data, scores, _ = fit_and_score(corpus, feature_sets, l2)
    labels = {split: np.asarray(data[split]["label"]) for split in data}
    trained_on = sorted(set(data["train"]["attack"]) - {"bonafide"})
    results: dict = {"corpus": str(corpus), "features": feature_sets, "trained_on_attacks": trained_on}
    for split in ("dev", "eval"):
        attacks = np.asarray(data[split]["attack"])
        results[split] = summarise(scores[split], labels[split], attacks, labels[split] == 0)
        results[f"{split}_per_attack"] = {
            attack: summarise(scores[split], labels[split], attacks, attacks == attack)["eer"]
            for attack in sorted(set(attacks) - {"bonafide"})
        }
    attacks = np.asarray(data["eval"]["attack"])
    known = np.array(
        [a in trained_on or getattr(ATTACK_BY_LABEL.get(a), "known_as", None) in trained_on for a in attacks]
    )
    spoof = labels["eval"] == 0
    for name, keep in (("eval_known", spoof & known), ("eval_unseen", spoof & ~known)):
        results[name] = summarise(scores["eval"], labels["eval"], attacks, keep) if keep.any() else None
    uncoded = np.asarray(data["eval"]["codec"]) == "none"
    results["eval_uncoded"] = summarise(
        scores["eval"][uncoded], labels["eval"][uncoded], attacks[uncoded], spoof[uncoded]
    )
    return results


def report(results: dict) -> str:
    lines = [
        f"features: {'+'.join(results['features'])}; trained on bona fide + "
        + ", ".join(results["trained_on_attacks"]),
        f"{'condition':<14}{'EER %':>8}{'minDCF':>8}{'bona':>6}{'spoof':>7}  attacks",
    ]
    for name in ("dev", "eval", "eval_known", "eval_unseen", "eval_uncoded"):
        row = results.get(name)
        if row:
            lines.append(
                f"{name:<14}{100 * row['eer']:>8.2f}{row['min_dcf']:>8.3f}{row['n_bonafide']:>6}"
                f"{row['n_spoof']:>7}  {' '.join(row['attacks'])}"
            )
    for split in ("dev", "eval"):
        per_attack = results[f"{split}_per_attack"]
        lines.append(f"{split} EER % per attack: " + ", ".join(f"{a} {100 * e:.1f}" for a, e in per_attack.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path, help="a corpus in the ASVspoof 5 layout (e.g. from make_mini_corpus)")
    parser.add_argument("--features", default="mfcc", help=f"comma list of {', '.join(FEATURE_SETS)}")
    parser.add_argument("--l2", type=float, default=1.0, help="L2 penalty of the logistic regression")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    try:
        results = run_baseline(
            args.corpus, [name.strip() for name in args.features.split(",") if name.strip()], args.l2
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
