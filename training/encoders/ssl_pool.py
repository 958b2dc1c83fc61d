"""The unlabelled pretraining pool: speech from the *train* split only, so no dev or eval number can leak.

Three sources, all keyed by the mini corpus's prompt keys (a key's split is a hash of the key, see
`corpus_sources.split_of_key`):
1. the corpus's own train split (bona fide, plus the training attacks' spoofs when `use_training_spoofs`);
2. every train-key Asterisk recording at any length, through the corpus's channel (noise, band-pass, level);
3. optionally more spoofs of the training attack methods (their own voices only) on train keys.
A share of the extra clips also gets an eval-style codec copy (augmentation, not eval data).

The pool is materialised once as FLAC plus `pool_manifest.tsv` (one row per clip: file, origin, attack, variant,
prompt key, seconds) and `check_pool_hygiene` verifies every row before pretraining reads a sample.
"""

import csv
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from training.corpus.attacks import ATTACK_BY_LABEL, ATTACKS, synthesize
from training.corpus.make_mini_corpus import CODECS, apply_codec, channel, level, write_flac
from training.corpus.sources import load_prompts, load_recordings, split_of_key


MANIFEST = "pool_manifest.tsv"
SUMMARY = "pool_summary.json"
TRAINING_ATTACKS = tuple(a.label for a in ATTACKS if a.split == "train")
# Fast training methods used for extra spoofs (Griffin-Lim, A03, is slow and stays at the corpus's own clips).
EXTRA_SPOOF_ATTACKS = ("A01", "A02", "A04")


class PoolHygieneError(ValueError):
    """A pool row that would leak dev/eval material (a dev or eval prompt key, or an attack outside train)."""


@dataclass(frozen=True)
class PoolClip:
    """One pool row. `file` is relative to the pool folder (or absolute for corpus clips)."""

    file: str
    origin: str  # "corpus_train", "extra_bonafide", "extra_spoof", or "<origin>+codec"
    attack: str  # "bonafide" or a training attack label
    variant: str
    prompt_key: str
    seconds: float


def corpus_train_clips(corpus_dir: str | Path, use_spoofs: bool) -> list[PoolClip]:
    """The corpus's train rows (from its provenance file), refusing anything not from the train split."""
    corpus_dir = Path(corpus_dir)
    metadata = corpus_dir / "mini_corpus.metadata.tsv"
    if not metadata.is_file():
        raise FileNotFoundError(f"{metadata} is missing: build the corpus with python -m training.make_mini_corpus")
    clips = []
    with open(metadata, encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if row["split"] != "train" or (row["attack"] != "bonafide" and not use_spoofs):
                continue
            path = corpus_dir / "flac_T" / f"{row['file']}.flac"
            seconds = round(sf.info(str(path)).duration, 3) if path.is_file() else 0.0
            clips.append(
                PoolClip(str(path), "corpus_train", row["attack"], row["variant"], row["prompt_key"], seconds)
            )
    return clips


def _render(task: dict) -> dict | None:
    """Generate one extra clip (a recording or a spoof), pass it through the channel, write FLAC(s)."""
    rng = np.random.default_rng(task["seed"])
    try:
        if task["attack"] == "bonafide":
            wave, rate = sf.read(task["source"], dtype="float64", always_2d=True)
            wave = wave.mean(axis=1)
        else:
            attack = ATTACK_BY_LABEL[task["attack"]]
            wave, rate = synthesize(attack, task["variant"], rng, task["text"], task["lang"], task["source"])
        audio = channel(wave, rate, rng)
    except RuntimeError as error:  # too short after trimming, or a tool refusing a text: counted by the caller
        return {"error": f"{task['name']}: {error}"}
    folder = Path(task["out_dir"])
    written = [(task["name"], task["name"], task["origin"], write_flac(folder / f"{task['name']}.flac", audio))]
    if task["codec"]:
        codec, quality = task["codec"]
        coded = level(apply_codec(audio, codec, quality), rng)
        name = f"{task['name']}_{codec}"
        written.append((name, task["name"], task["origin"] + "+codec", write_flac(folder / f"{name}.flac", coded)))
    return {"written": written}


def plan_extra_clips(
    extra_bonafide: bool, spoofs_per_attack: int, use_spoofs: bool, coded_fraction: float, seed: int
) -> list[dict]:
    """Tasks for the extra clips: train-key recordings and train-key spoofs of the training methods only."""
    rng = np.random.default_rng([seed, 7])
    recordings = [r for r in load_recordings_any_length() if split_of_key(r.key) == "train"]
    tasks = []
    if extra_bonafide:
        for r in recordings:
            tasks.append(
                {"attack": "bonafide", "variant": "-", "source": r.path, "key": r.key, "text": "", "lang": ""}
            )
    if use_spoofs and spoofs_per_attack:
        prompts = [p for p in load_prompts() if p.split == "train"]
        for label in EXTRA_SPOOF_ATTACKS:
            attack = ATTACK_BY_LABEL[label]
            usable = [p for p in prompts if p.lang == "en" or not attack.english_only]
            for i in range(spoofs_per_attack):
                variant = str(rng.choice(attack.variants))
                if attack.kind == "copy":
                    r = recordings[int(rng.integers(len(recordings)))]
                    tasks.append({"attack": label, "variant": variant, "source": r.path, "key": r.key, "text": ""})
                    tasks[-1]["lang"] = ""
                else:
                    p = usable[i % len(usable)]
                    tasks.append({"attack": label, "variant": variant, "source": "", "key": p.key, "text": p.text})
                    tasks[-1]["lang"] = p.lang
    for number, task in enumerate(tasks):
        coded = rng.random() < coded_fraction
        codec = (str(rng.choice(sorted(CODECS))), int(rng.integers(1, 4))) if coded else None
        origin = "extra_bonafide" if task["attack"] == "bonafide" else "extra_spoof"
        task.update(name=f"P_{number:06d}", seed=int(rng.integers(2**62)), codec=codec, origin=origin)
    return tasks


def load_recordings_any_length():
    """All Asterisk recordings with speech text, whatever their length (the corpus itself keeps 1-10 s)."""
    from training.corpus import sources as corpus_sources

    bounds = corpus_sources.MIN_SECONDS, corpus_sources.MAX_SECONDS
    corpus_sources.MIN_SECONDS, corpus_sources.MAX_SECONDS = 0.0, float("inf")
    try:
        return load_recordings()
    finally:
        corpus_sources.MIN_SECONDS, corpus_sources.MAX_SECONDS = bounds


def build_pool(
    pool_dir: str | Path,
    corpus_dir: str | Path,
    use_spoofs: bool,
    extra_bonafide: bool,
    spoofs_per_attack: int,
    coded_fraction: float,
    seed: int,
    workers: int = 1,
) -> dict:
    """Render the pool into `pool_dir` (staged, then renamed: complete or absent) and return its summary."""
    pool_dir = Path(pool_dir)
    if (pool_dir / MANIFEST).is_file():
        raise FileExistsError(f"{pool_dir} already holds a pool; delete it to rebuild")
    staging = pool_dir.with_name(f".{pool_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "flac").mkdir(parents=True)
    clips = corpus_train_clips(corpus_dir, use_spoofs)
    tasks = plan_extra_clips(extra_bonafide, spoofs_per_attack, use_spoofs, coded_fraction, seed)
    for task in tasks:
        task["out_dir"] = str(staging / "flac")
    by_name = {task["name"]: task for task in tasks}
    failures = []
    bar = tqdm(total=len(tasks), desc="ssl pool", unit="clip")
    with ProcessPoolExecutor(max(1, workers)) as executor:
        results = map(_render, tasks) if workers <= 1 else executor.map(_render, tasks, chunksize=8)
        for result in results:
            bar.update(1)
            if "error" in result:
                failures.append(result["error"])
                continue
            for name, base, origin, seconds in result["written"]:
                task = by_name[base]
                row = PoolClip(f"flac/{name}.flac", origin, task["attack"], task["variant"], task["key"], seconds)
                clips.append(row)
    bar.close()
    write_manifest(staging, clips)
    summary = {
        "clips": len(clips),
        "by_origin": {o: sum(c.origin == o for c in clips) for o in sorted({c.origin for c in clips})},
        "by_attack": {a: sum(c.attack == a for c in clips) for a in sorted({c.attack for c in clips})},
        "hours": round(sum(c.seconds for c in clips) / 3600, 3),
        "not_rendered": len(failures),
        "not_rendered_examples": failures[:10],
        "settings": {
            "corpus_dir": str(corpus_dir),
            "use_training_spoofs": use_spoofs,
            "extra_bonafide": extra_bonafide,
            "extra_spoofs_per_attack": spoofs_per_attack,
            "coded_fraction": coded_fraction,
            "seed": seed,
        },
    }
    (staging / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    if pool_dir.exists():
        shutil.rmtree(pool_dir)
    os.replace(staging, pool_dir)
    return summary


def write_manifest(folder: Path, clips: list[PoolClip]) -> None:
    names = [f.name for f in fields(PoolClip)]
    with open(folder / MANIFEST, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names, delimiter="\t")
        writer.writeheader()
        writer.writerows(asdict(c) for c in clips)


def read_manifest(pool_dir: str | Path) -> list[PoolClip]:
    """The pool's rows, with files resolved against the pool folder."""
    pool_dir = Path(pool_dir)
    path = pool_dir / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the pool was never built (python -m training.pretrain_ssl)")
    clips = []
    with open(path, encoding="utf-8") as handle:
        for number, row in enumerate(csv.DictReader(handle, delimiter="\t"), start=2):
            try:
                file = row["file"] if os.path.isabs(row["file"]) else str(pool_dir / row["file"])
                clips.append(PoolClip(file, row["origin"], row["attack"], row["variant"], row["prompt_key"], 0.0))
            except (KeyError, TypeError) as error:
                raise ValueError(f"{path}:{number}: malformed pool row ({error})") from error
    return clips


def held_out_keys(corpus_dir: str | Path) -> set[str]:
    """Every prompt key that a dev or eval clip of the corpus uses (bona fide, TTS text or vocoder source)."""
    keys = set()
    with open(Path(corpus_dir) / "mini_corpus.metadata.tsv", encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if row["split"] in ("dev", "eval"):
                keys.add(row["prompt_key"])
    return keys


def check_pool_hygiene(clips: list[PoolClip], corpus_dir: str | Path) -> None:
    """Refuse a pool that holds a dev/eval prompt key, a non-training attack or a training attack's foreign voice."""
    held_out = held_out_keys(corpus_dir)
    for clip in clips:
        where = f"pool clip {clip.file} ({clip.origin})"
        if clip.prompt_key in held_out or split_of_key(clip.prompt_key) != "train":
            raise PoolHygieneError(f"{where}: prompt key {clip.prompt_key!r} belongs to dev/eval")
        if clip.attack == "bonafide":
            continue
        if clip.attack not in TRAINING_ATTACKS:
            raise PoolHygieneError(f"{where}: attack {clip.attack} is not a training attack {TRAINING_ATTACKS}")
        if clip.variant not in ATTACK_BY_LABEL[clip.attack].variants:
            raise PoolHygieneError(f"{where}: variant {clip.variant!r} is not one of {clip.attack}'s training voices")
