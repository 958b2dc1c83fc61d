"""A tiny pretraining pool written straight to disk (no Debian packages): manifest, FLAC clips, corpus metadata.

Prompt keys are chosen so that `split_of_key` puts them in train, like the real pool's, so the hygiene check
passes; the corpus metadata lists dev/eval keys that the pool must not contain.
"""

import csv
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from training.corpus.sources import split_of_key
from training.encoders.ssl_pool import PoolClip, write_manifest


def keys_of_split(split: str, count: int) -> list[str]:
    keys, index = [], 0
    while len(keys) < count:
        if split_of_key(f"test/key{index}") == split:
            keys.append(f"test/key{index}")
        index += 1
    return keys


def write_corpus_metadata(corpus: Path, train_keys: list[str]) -> Path:
    """A corpus folder with only the provenance file: train rows (none rendered) and dev/eval rows."""
    corpus.mkdir(parents=True, exist_ok=True)
    columns = ["file", "split", "attack", "variant", "lang", "prompt_key", "source", "text", "codec", "codec_q"]
    rows = [["D_0000000000", "dev", "A05", "kal", "en", keys_of_split("dev", 1)[0], "-", "-", "-", "-"]]
    rows.append(["E_0000000000", "eval", "A10", "slt_hts", "en", keys_of_split("eval", 1)[0], "-", "-", "-", "-"])
    with open(corpus / "mini_corpus.metadata.tsv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow([*columns, "enrolment"])
        writer.writerows([*(r + ["false"] for r in rows)])
    return corpus


def write_pool(pool: Path, clips: int = 6, seconds: float = 1.2, seed: int = 0) -> list[PoolClip]:
    """`clips` voiced / buzzy clips with train keys, in the pool layout the pretraining script reads."""
    rng = np.random.default_rng(seed)
    (pool / "flac").mkdir(parents=True, exist_ok=True)
    rows = []
    for index, key in enumerate(keys_of_split("train", clips)):
        t = np.arange(int(seconds * 16000)) / 16000
        phase = 2 * np.pi * np.cumsum(rng.uniform(100, 200) * (1 + 0.1 * np.sin(3 * t))) / 16000
        wave = sum(np.sin(h * phase) / h for h in range(1, 10)) if index % 2 else np.sign(np.sin(phase))
        wave = 0.3 * wave / np.abs(wave).max() + 0.01 * rng.standard_normal(t.size)
        sf.write(pool / "flac" / f"P_{index:06d}.flac", wave, 16000, subtype="PCM_16")
        attack, variant = ("bonafide", "-") if index % 2 else ("A01", "m1")
        rows.append(PoolClip(f"flac/P_{index:06d}.flac", "extra_bonafide", attack, variant, key, seconds))
    write_manifest(pool, rows)
    return rows


TINY_ENCODER_ARGS = [
    "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2", "--intermediate_size", "64",
    "--conv_dim", "16", "16", "16", "--conv_kernel", "10", "8", "16", "--conv_stride", "5", "4", "16",
    "--num_conv_pos_embeddings", "8", "--num_conv_pos_embedding_groups", "2",
]  # fmt: skip


def tiny_config(folder: Path) -> Path:
    """The shipped recipe with codebooks small enough for a few seconds of audio."""
    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "ssl_tiny.yaml").read_text())
    recipe["codebooks"] = [
        {"features": "logmel", "dims": 16, "clusters": 8},
        {"features": "mfcc", "dims": 5, "clusters": 4},
    ]
    path = folder / "ssl_test.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def tiny_pretrain_args(corpus: Path, pool: Path, output: Path, steps: int) -> list[str]:
    return [
        "--config", str(tiny_config(output.parent)), "--corpus_dir", str(corpus), "--pool_dir", str(pool),
        "--output_dir", str(output), "--max_steps", str(steps), "--batch_size", "2", "--crop_samples", "8000",
        "--kmeans_frames", "200", "--kmeans_iterations", "3", "--log_every_steps", "1", "--checkpoint_every_steps", "2",
        "--torch_threads", "1", "--cpu", "true", "--pool_workers", "1", *TINY_ENCODER_ARGS,
    ]  # fmt: skip
