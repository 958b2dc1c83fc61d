"""Linear probe of a frozen encoder: utterance mean + std of its hidden states -> logistic regression on train.

    python -m training.encoders.linear_probe CORPUS_DIR --encoder FOLDER [--random_init] [--out probe.json]

Why: before any adapter is trained, this says whether the frozen features carry spoofing cues at all; the same
classifier and metrics as the MFCC baseline (`training.baseline_mfcc`), so the numbers compare directly.
`--random_init` probes the same architecture with random weights (what pretraining bought).

The encoder runs inside a MoLEx model whose experts are all at their zero delta (`from_backbone`), so every backbone
family MoLEx supports (wav2vec2 / HuBERT / WavLM / data2vec-audio folders, Whisper folders, Hub ids) is probed
through the same front end (waveform normalisation or Whisper's log-mel) that MoLEx trains on.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from modeling_molex import MoLExForAudioClassification
from training.baselines.mfcc import summarise
from training.corpus.attacks import ATTACK_BY_LABEL
from training.data.audio import load_audio, normalize
from training.data.loaders import audio_paths, load_asvspoof5
from training.metrics.calibration import fit_logistic_regression


L2_VALUES = (1.0, 10.0, 100.0)


def load_encoder(folder: str, random_init: bool, seed: int = 0) -> MoLExForAudioClassification:
    """The frozen encoder inside a zero-delta MoLEx model (pretrained weights, or the same architecture at random)."""
    torch.manual_seed(seed)
    model = MoLExForAudioClassification.from_backbone(folder)
    if random_init:  # the same resolved config (front end, SpecAugment off, ...), freshly initialised weights
        torch.manual_seed(seed)
        model = MoLExForAudioClassification(model.config)
    return model.eval()


@torch.inference_mode()
def embed(encoder: MoLExForAudioClassification, paths: list[str]) -> dict[str, np.ndarray]:
    """Per clip: mean+std over frames of every layer's hidden states, averaged over layers and concatenated."""
    layer_mean, layer_concat = [], []
    for path in paths:
        wave = load_audio(path)
        if encoder.config.normalize_audio:
            wave = normalize(wave, len(wave))
        with encoder.disable_adapter():
            hidden = encoder(torch.from_numpy(wave)[None], output_hidden_states=True).hidden_states
        pooled = torch.stack([torch.cat([h[0].mean(0), h[0].std(0)]) for h in hidden])  # (layers, 2 * width)
        layer_mean.append(pooled.mean(0).numpy())
        layer_concat.append(pooled.flatten().numpy())
    return {"layer_mean": np.stack(layer_mean), "layer_concat": np.stack(layer_concat)}


def fit_probe(features: dict[str, np.ndarray], train_labels: np.ndarray, l2: float) -> dict[str, np.ndarray]:
    """Standardise on train, fit the class-balanced logistic regression, score every split (higher = bona fide)."""
    train = features["train"]
    mean, std = train.mean(0), train.std(0) + 1e-8
    weights, bias = fit_logistic_regression((train - mean) / std, train_labels, l2)
    return {split: (values - mean) / std @ weights + bias for split, values in features.items()}


def probe(corpus: str, encoder: MoLExForAudioClassification, data=None) -> dict:
    """EER / minDCF on dev, eval, eval known and eval unseen for each pooling and L2 value (`data`: the corpus's
    train/dev/eval `DatasetDict`, e.g. seeded subsets; read from `corpus` when not given)."""
    data = data if data is not None else load_asvspoof5(corpus, splits=("train", "dev", "eval"))
    features = {split: embed(encoder, audio_paths(data[split])) for split in data}
    labels = {split: np.asarray(data[split]["label"]) for split in data}
    trained_on = sorted(set(data["train"]["attack"]) - {"bonafide"})
    attacks = np.asarray(data["eval"]["attack"])
    known = np.array(
        [a in trained_on or getattr(ATTACK_BY_LABEL.get(a), "known_as", None) in trained_on for a in attacks]
    )
    results = {}
    for pooling in ("layer_mean", "layer_concat"):
        for l2 in L2_VALUES:
            scores = fit_probe({split: features[split][pooling] for split in data}, labels["train"], l2)
            spoof = labels["eval"] == 0
            row = {
                "dev": summarise(scores["dev"], labels["dev"], np.asarray(data["dev"]["attack"]), labels["dev"] == 0)
            }
            row["eval"] = summarise(scores["eval"], labels["eval"], attacks, spoof)
            row["eval_known"] = summarise(scores["eval"], labels["eval"], attacks, spoof & known)
            row["eval_unseen"] = summarise(scores["eval"], labels["eval"], attacks, spoof & ~known)
            results[f"{pooling}/l2={l2:g}"] = {k: {"eer": v["eer"], "min_dcf": v["min_dcf"]} for k, v in row.items()}
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus")
    parser.add_argument(
        "--encoder", required=True, help="a speech encoder folder or Hub id (wav2vec2 family, Whisper)"
    )
    parser.add_argument("--random_init", action="store_true", help="same architecture, random weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results = probe(args.corpus, load_encoder(args.encoder, args.random_init, args.seed))
    for name, row in results.items():
        cells = " / ".join(f"{100 * row[s]['eer']:.1f}" for s in ("dev", "eval", "eval_known", "eval_unseen"))
        print(f"{name:<24} EER % dev / eval / known / unseen: {cells}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
