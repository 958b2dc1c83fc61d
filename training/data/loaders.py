"""Spoofing corpora → `datasets.DatasetDict`, and the collator that turns rows into model batches.

Loaders read each corpus exactly as it is shipped (protocol files + audio folders) and return one `Dataset` per
split with the columns of `FEATURES`: `audio` is a `datasets.Audio(decode=False)` column, so a row's audio is
`{"path": absolute path, "bytes": None}` and the Hub's tooling sees an audio column. It stays undecoded on purpose:
in datasets 5.x decoding needs torchcodec + FFmpeg; `AudioCollator` decodes with soundfile inside the DataLoader
workers, then pads and normalises with the model's feature extractor. `audio_paths(dataset)` lists the paths from
Arrow without touching the rows.

    ds = load_asvspoof5("/data/ASVspoof5", splits=("train", "dev"))
    loader = DataLoader(ds["train"], batch_size=4, shuffle=True, collate_fn=AudioCollator(train=True))

Missing audio. A protocol row whose file does not exist raises `MissingAudioError` (how many, and the first few).
With `skip_missing=True` those rows are dropped instead; the count and first ids are logged as a warning and
written into the split's `dataset.info.description` ("... N protocol rows skipped because their audio is missing").

Leaks and unscorable splits (`training.data.split_checks`). A clip used by two splits (same utterance id, same file
through a symlink or hard link, or the same bytes) is refused naming both files. `scored_splits` names the splits
that training scores (dev, eval) and what they need: both classes, every clip at least one model frame long.
"""

import logging
import multiprocessing
import numbers
import os
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from datasets import Audio, ClassLabel, Dataset, DatasetDict, DatasetInfo, Features, Value
from transformers import Wav2Vec2FeatureExtractor

from training.data.audio import AudioDecodeError, ClipPolicy, crop_or_pad, eval_windows, load_audio
from training.data.protocols import (
    ProtocolError,
    check_unique_ids,
    read_asvspoof5_protocol,
    read_asvspoof2019_protocol,
    read_in_the_wild_meta,
    read_label_csv,
    resolve_audio_paths,
)
from training.data.split_checks import ScoredSplit, SplitLeakCheck, check_scored_split


__all__ = [
    "ASVSPOOF5_SPLITS",
    "FEATURES",
    "LABEL_NAMES",
    "AudioCollator",
    "AudioDecodeError",
    "ClipPolicy",
    "MissingAudioError",
    "ProtocolError",
    "ScoredSplit",
    "audio_paths",
    "load_asvspoof5",
    "load_asvspoof2019_la",
    "load_csv_dataset",
    "load_in_the_wild",
]

logger = logging.getLogger(__name__)

LABEL_NAMES = ["spoof", "bonafide"]  # index = label id, as in the model's id2label
FEATURES = Features(
    {
        "utt_id": Value("string"),
        "audio": Audio(decode=False),  # {"path": absolute path, "bytes": None}; decoded by AudioCollator
        "label": ClassLabel(names=LABEL_NAMES),
        "split": Value("string"),
        "speaker": Value("string"),
        "gender": Value("string"),
        "attack": Value("string"),
        "attack_tag": Value("string"),
        "codec": Value("string"),
        "codec_q": Value("int32"),
        "codec_seed": Value("string"),
    }
)
# split → (audio folder, protocol file), as unpacked from the Zenodo / HF release.
ASVSPOOF5_SPLITS = {
    "train": ("flac_T", "ASVspoof5.train.tsv"),
    "dev": ("flac_D", "ASVspoof5.dev.track_1.tsv"),
    "eval": ("flac_E_eval", "ASVspoof5.eval.track_1.tsv"),
}
ASVSPOOF2019_LA_SPLITS = {
    "train": ("ASVspoof2019_LA_train", "ASVspoof2019.LA.cm.train.trn.txt"),
    "dev": ("ASVspoof2019_LA_dev", "ASVspoof2019.LA.cm.dev.trl.txt"),
    "eval": ("ASVspoof2019_LA_eval", "ASVspoof2019.LA.cm.eval.trl.txt"),
}
_SHOW = 5  # how many offending ids an error message lists
_MAX_WORKERS = 256  # DataLoader workers with their own skip counter


class MissingAudioError(FileNotFoundError):
    """Protocol rows whose audio file does not exist. `missing` holds every absent path."""

    def __init__(self, protocol: str | Path, missing: list[str], total: int):
        self.missing = missing
        first = ", ".join(missing[:_SHOW]) + (", ..." if len(missing) > _SHOW else "")
        super().__init__(
            f"{protocol}: {len(missing)} of {total} protocol rows have no audio file (first: {first}); "
            "fix the paths, or pass skip_missing=True to drop those rows"
        )


# ---------------------------------------------------------------------------------------------------------------------
# corpus loaders


def load_asvspoof5(
    root: str | Path,
    splits: Iterable[str] = ("train", "dev", "eval"),
    skip_missing: bool = False,
    scored_splits: dict[str, ScoredSplit] | None = None,
) -> DatasetDict:
    """Load ASVspoof 5 track 1 from the unpacked release: `flac_T/`, `flac_D/`, `flac_E_eval/` and the protocols.

    The protocol files may sit in `root` or in `root/ASVspoof5_protocols/` (the archive's own folder). Only protocol
    rows become examples: the flac folders also hold track-2 enrolment audio, which is ignored.
    """
    root, leaks = Path(root), SplitLeakCheck()
    datasets = {}
    for split in _check_splits(splits, ASVSPOOF5_SPLITS, "load_asvspoof5"):
        folder, name = ASVSPOOF5_SPLITS[split]
        protocol = _find_file(name, [root, root / "ASVspoof5_protocols"])
        rows = read_asvspoof5_protocol(protocol)
        datasets[split] = _build_split(
            rows, split, protocol, root / folder, "ASVspoof 5", skip_missing, leaks=leaks, scored=scored_splits
        )
    leaks.check()
    return DatasetDict(datasets)


def load_asvspoof2019_la(
    root: str | Path,
    splits: Iterable[str] = ("train", "dev", "eval"),
    skip_missing: bool = False,
    scored_splits: dict[str, ScoredSplit] | None = None,
) -> DatasetDict:
    """Load ASVspoof 2019 LA (CM protocols). `root` may be the folder holding `LA/` or the `LA/` folder itself.

    Dev and eval flac folders also hold ASV enrolment files that no CM protocol lists; they are ignored.
    """
    root = Path(root)
    candidates = [root, root / "LA"]
    la = next((c for c in candidates if (c / "ASVspoof2019_LA_cm_protocols").is_dir()), None)
    if la is None:
        raise FileNotFoundError(f"no ASVspoof2019_LA_cm_protocols/ folder in {' or '.join(map(str, candidates))}")
    datasets, leaks = {}, SplitLeakCheck()
    for split in _check_splits(splits, ASVSPOOF2019_LA_SPLITS, "load_asvspoof2019_la"):
        folder, name = ASVSPOOF2019_LA_SPLITS[split]
        protocol = _find_file(name, [la / "ASVspoof2019_LA_cm_protocols"])
        rows = read_asvspoof2019_protocol(protocol)
        datasets[split] = _build_split(
            rows,
            split,
            protocol,
            la / folder / "flac",
            "ASVspoof 2019 LA",
            skip_missing,
            leaks=leaks,
            scored=scored_splits,
        )
    leaks.check()
    return DatasetDict(datasets)


def load_in_the_wild(root: str | Path, skip_missing: bool = False) -> DatasetDict:
    """Load In-the-Wild (`meta.csv` + wav files in one folder) as a single "eval" split; it has no attack ids."""
    protocol = _find_file("meta.csv", [Path(root)])
    rows = read_in_the_wild_meta(protocol)
    return DatasetDict({"eval": _build_split(rows, "eval", protocol, Path(root), "In-the-Wild", skip_missing)})


def load_csv_dataset(
    csv_path: str | Path,
    audio_root: str | Path | None = None,
    split: str = "eval",
    skip_missing: bool = False,
    scored_splits: dict[str, ScoredSplit] | None = None,
) -> DatasetDict:
    """Load any corpus described by a CSV with columns `path,label` and optionally `utt_id`, `split`, `attack`,
    `speaker`, `gender`, `codec`, `codec_q`, `attack_tag`, `codec_seed` (see `training.data.protocols.read_label_csv`).

    Relative paths are resolved against `audio_root` (default: the CSV's folder) and may not climb out of it with
    `..`; absolute paths are taken as given. A `split` column splits the rows into several datasets; without it
    every row goes to `split`. A file listed twice, in any split, is an error.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"no such CSV file: {csv_path}")
    audio_root = Path(audio_root) if audio_root is not None else csv_path.parent
    rows = read_label_csv(csv_path)
    by_split: dict[str, list[dict]] = {}
    for row in rows:
        by_split.setdefault(row.pop("split") or split, []).append(row)
    check_unique_ids(rows, csv_path)  # across splits too: one file must not be both train and eval
    resolve_audio_paths(rows, csv_path, os.path.abspath(audio_root), absolute_ok=True)
    leaks = SplitLeakCheck()
    datasets = {
        name: _build_split(
            part, name, csv_path, audio_root, csv_path.name, skip_missing, True, leaks=leaks, scored=scored_splits
        )
        for name, part in by_split.items()
    }
    leaks.check()
    return DatasetDict(datasets)


def _check_splits(splits: Iterable[str], known: dict, caller: str) -> list[str]:
    splits = [splits] if isinstance(splits, str) else list(splits)
    unknown = [s for s in splits if s not in known]
    if unknown or not splits:
        raise ValueError(f"{caller}: splits must be a non-empty subset of {list(known)}, got {splits}")
    return list(dict.fromkeys(splits))


def _find_file(name: str, folders: list[Path]) -> Path:
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{name} not found in {' or '.join(str(f) for f in folders)}")


def _build_split(
    rows: list[dict],
    split: str,
    protocol: Path,
    audio_root: Path,
    corpus: str,
    skip_missing: bool,
    absolute_ok: bool = False,
    leaks: SplitLeakCheck | None = None,
    scored: dict[str, ScoredSplit] | None = None,
) -> Dataset:
    """Check ids, paths and files (the rows that exist go to `leaks`; a split named in `scored` must be scorable),
    then build the Arrow table.

    Listing each folder once is much faster than one stat per row, and handing `from_dict` typed Arrow arrays skips
    its per-value Python encoding: together they make the 680k-row ASVspoof 5 eval protocol load in seconds.
    """
    check_unique_ids(rows, protocol)
    resolve_audio_paths(rows, protocol, os.path.abspath(audio_root), absolute_ok)
    listings: dict[str, set[str] | None] = {}
    present, missing = [], []
    for row in rows:
        folder, name = os.path.split(row["audio"])
        if folder not in listings:
            listings[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else None
        if listings[folder] is not None and name in listings[folder]:
            present.append(row)
        else:
            missing.append(row["audio"])
    description = f"{corpus} {split} split from {protocol}: {len(present)} examples."
    if missing and not skip_missing:
        raise MissingAudioError(protocol, missing, len(rows))
    if missing:
        first = ", ".join(Path(p).stem for p in missing[:_SHOW])
        if not present:
            raise ProtocolError(
                protocol,
                None,
                f"every one of the {len(rows)} protocol rows lacks its audio (first: {first}); nothing to load",
            )
        description += f" {len(missing)} protocol rows skipped because their audio is missing (first: {first})."
        logger.warning(
            "%s: %s protocol rows skipped because their audio is missing (first: %s)", protocol, len(missing), first
        )
    if leaks is not None:
        leaks.add(split, protocol, present)
    if scored and split in scored:
        check_scored_split(split, protocol, present, scored[split])
    arrays = {
        key: pa.array([row[key] for row in present], type=FEATURES[key].pa_type)
        for key in FEATURES
        if key not in ("audio", "split")
    }
    paths = pa.array([row["audio"] for row in present], type=pa.string())
    arrays["audio"] = pa.StructArray.from_arrays([pa.nulls(len(present), pa.binary()), paths], names=["bytes", "path"])
    arrays["split"] = pa.array([split] * len(present), type=pa.string())
    arrays = {key: arrays[key] for key in FEATURES}
    return Dataset.from_dict(arrays, features=FEATURES, info=DatasetInfo(description=description, features=FEATURES))


def audio_paths(dataset: Dataset) -> list[str]:
    """The audio file path of every row, read from the Arrow column (no per-row decoding or dict building)."""
    column = dataset.with_format("arrow")["audio"]
    return pa.concat_arrays([chunk.field("path") for chunk in pa.chunked_array(column).chunks]).to_pylist()


def _audio_source(row: dict) -> str:
    """The file behind a row's audio: an `Audio(decode=False)` value `{"path", "bytes"}` or a plain path string."""
    audio = row["audio"]
    if isinstance(audio, dict):
        if audio.get("bytes") is not None or not audio.get("path"):
            raise ValueError(
                f"utterance {row.get('utt_id')!r}: the collator reads audio files by path; this row holds in-memory "
                "bytes without a path (store the file on disk, or decode it before batching)"
            )
        return audio["path"]
    return str(audio)


# ---------------------------------------------------------------------------------------------------------------------
# decoding + batching


def _class_label(row: dict) -> int:
    """The row's label as a class index; `int()` would turn 0.5 into 0 and 1.7 into 1 without a word."""
    label = row["label"]
    if isinstance(label, numbers.Integral) and not isinstance(label, bool) and label in (0, 1):
        return int(label)
    raise ValueError(f"utterance {row.get('utt_id')!r}: label {label!r} must be 0 (spoof) or 1 (bonafide)")


class AudioCollator:
    """DataLoader `collate_fn`: decode each row's file, resample, crop/pad per `ClipPolicy`, then let the model's
    feature extractor (`Wav2Vec2FeatureExtractor`, e.g. `model.feature_extractor()`) normalise and zero-pad.

    The extractor normalises each clip over its signal samples only (its attention mask), exactly as the pipeline
    does at inference; without one, the collator builds `Wav2Vec2FeatureExtractor(do_normalize=policy.normalize)`.
    Training, "center" and "windows" clips are padded to `policy.num_samples`, "full" eval clips to the longest.

    Returns `input_values` (float32, B×T), `attention_mask` (int64, 1 = signal sample, 0 = zero padding), `labels`
    (int64, 1 = bonafide) and `utt_ids` (list of str, pop it before `model(**batch)`). With
    `ClipPolicy(eval_mode="windows")` an eval clip yields several rows that share one utt_id: average their scores.

    Training crops come from a numpy Generator seeded with `seed`. Inside DataLoader workers it is re-seeded with
    `(seed, worker seed)`, so workers draw different crops, and a fixed `DataLoader(generator=...)` reproduces them.

    `on_error="skip"` drops clips that fail to decode (logged as warnings) instead of raising; `num_skipped` counts
    them across all worker processes. A batch whose every clip failed comes back with B = 0.
    """

    def __init__(
        self,
        policy: ClipPolicy | None = None,
        train: bool = True,
        seed: int | None = 0,
        on_error: Literal["raise", "skip"] = "raise",
        crop_per_utterance: bool = False,
        feature_extractor: Wav2Vec2FeatureExtractor | None = None,
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if crop_per_utterance and seed is None:
            raise ValueError("crop_per_utterance needs an integer seed")
        self.policy, self.train, self.seed, self.on_error = policy or ClipPolicy(), train, seed, on_error
        if feature_extractor is None:
            feature_extractor = Wav2Vec2FeatureExtractor(
                sampling_rate=self.policy.sampling_rate, do_normalize=self.policy.normalize, return_attention_mask=True
            )
        if feature_extractor.sampling_rate != self.policy.sampling_rate or feature_extractor.feature_size != 1:
            raise ValueError(
                f"feature_extractor expects {feature_extractor.feature_size} channel(s) at "
                f"{feature_extractor.sampling_rate} Hz, but ClipPolicy.sampling_rate is {self.policy.sampling_rate} "
                "(mono): make them agree"
            )
        self.feature_extractor = feature_extractor
        # With crop_per_utterance the random crop of a clip depends only on (seed, epoch, utt_id): a run resumed
        # mid-epoch (which skips batches without collating them) sees exactly the crops of an uninterrupted run.
        self.crop_per_utterance, self.epoch = crop_per_utterance, 0
        self._rng, self._rng_key = np.random.default_rng(seed), None
        # Shared memory, one slot per process (main = 0, worker i = i + 1), so workers' counts are visible here
        # without a lock; a RawArray, unlike a Value's lock, pickles into fork, spawn and forkserver workers alike.
        self._skipped = multiprocessing.RawArray("q", _MAX_WORKERS + 1)

    @property
    def num_skipped(self) -> int:
        """Clips dropped by `on_error="skip"` so far, summed over the main process and every DataLoader worker."""
        return sum(self._skipped)

    def _generator(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        key = None if info is None else info.seed
        if key != self._rng_key:
            self._rng = np.random.default_rng(None if self.seed is None else [self.seed, key])
            self._rng_key = key
        return self._rng

    def set_epoch(self, epoch: int) -> None:
        """Select the crops of `epoch` (only matters with `crop_per_utterance`)."""
        self.epoch = epoch

    def clips(self, wave: np.ndarray, utt_id: str | None = None) -> list[tuple[np.ndarray, int]]:
        """One waveform → list of (clip, number of signal samples), following the policy for train or eval."""
        p = self.policy
        if self.train:
            if self.crop_per_utterance:
                rng = np.random.default_rng([self.seed, self.epoch, zlib.crc32(str(utt_id).encode())])
            else:
                rng = self._generator()
            return [crop_or_pad(wave, p.num_samples, p.train_crop, p.pad, rng)]
        if p.eval_mode == "full":
            return [(wave, len(wave))]
        if p.eval_mode == "center":
            return [crop_or_pad(wave, p.num_samples, "center", p.pad, self._rng)]
        return eval_windows(wave, p.num_samples, p.window_hop or p.num_samples, p.pad)

    def __call__(self, rows: list[dict]) -> dict:
        signals, labels, utt_ids = [], [], []
        for row in rows:
            try:
                wave = load_audio(_audio_source(row), self.policy.sampling_rate)
            except AudioDecodeError as error:
                if self.on_error == "raise":
                    raise
                info = torch.utils.data.get_worker_info()
                self._skipped[0 if info is None else 1 + info.id % _MAX_WORKERS] += 1
                logger.warning("skipping utterance %s: %s", row.get("utt_id"), error)
                continue
            label = _class_label(row)
            for clip, num_signal in self.clips(wave, row.get("utt_id")):
                signals.append(clip[:num_signal])  # zero padding is the extractor's job (and its mask's)
                labels.append(label)
                utt_ids.append(row["utt_id"])
        if not signals:
            input_values, attention_mask = torch.zeros(0, 0), torch.zeros(0, 0, dtype=torch.long)
        else:
            fixed = self.train or self.policy.eval_mode != "full"
            features = self.feature_extractor(
                signals,
                sampling_rate=self.policy.sampling_rate,
                padding="max_length" if fixed else "longest",
                max_length=self.policy.num_samples if fixed else None,
                return_attention_mask=True,
                return_tensors="pt",
            )
            input_values = features["input_values"].to(torch.float32)  # (B, T)
            attention_mask = features["attention_mask"].to(torch.long)  # (B, T), 1 = signal
        return {
            "input_values": input_values,
            "attention_mask": attention_mask,
            "labels": torch.tensor(labels, dtype=torch.long),
            "utt_ids": utt_ids,
        }
