"""Checks on whole splits that no single protocol line shows, made when the corpus is loaded, before any training.

Leaks between splits (`SplitLeakCheck`): a dev number means nothing when dev clips were also trained on. A file is
refused when it is used by two splits under any disguise:
- the same utterance id in two protocols;
- the same file: a symlink in `flac_D/` to a `flac_T/` clip, a hard link, a symlinked folder (compared by device and
  inode, which `os.stat` follows, so every spelling of one file is caught);
- the same bytes: a copy. Sizes are compared first (one `stat` per file, which the inode check needs anyway); only
  files of equal size in different splits are read: 8 KiB of each (start and middle), and the whole file only
  where those agree.
Within one split, symlinks and copies stay allowed (the release, and our data-scale bench, link clips); the protocol
checks already refuse one path listed twice (`protocols.resolve_audio_paths`).

Scored splits (`ScoredSplit`): the dev split picks the best model and fits the calibration, the eval split gives the
final numbers. Either one with a single class, or with a clip shorter than one frame of the model, used to kill
training at its first (or last) evaluation; both are refused at load, naming the protocol file and line.
"""

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from training.data.audio import load_audio
from training.data.protocols import ProtocolError


__all__ = ["ScoredSplit", "SplitLeakCheck", "check_scored_split", "clip_samples"]

_FINGERPRINT_BYTES = 4096
_CLASS_NAMES = {0: "spoof", 1: "bona fide"}


@dataclass(frozen=True)
class ScoredSplit:
    """What a split that training scores (dev, eval) must hold.

    Args:
        min_samples: shortest clip the model scores, in samples at `sampling_rate` (one frame of its feature
            encoder, `modeling_molex.model_inputs.minimum_input_samples`); None skips the length check.
        sampling_rate: the model's rate; a file's length is converted to it before the comparison.
        both_classes: refuse a split without bona fide or without spoof clips (no EER, no calibration).
    """

    min_samples: int | None = None
    sampling_rate: int = 16_000
    both_classes: bool = True


def clip_samples(path: str, sampling_rate: int) -> int:
    """Length of an audio file in samples at `sampling_rate`, from its header when soundfile reads the format
    (no decoding), else by decoding it (`load_audio`, which names the file when it cannot)."""
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return len(load_audio(path, sampling_rate))
    return int(info.frames * sampling_rate // info.samplerate)


def check_scored_split(split: str, protocol: Path, rows: list[dict], requirement: ScoredSplit) -> None:
    """Refuse a split that training could not score: one class only, or a clip shorter than the model's minimum."""
    if requirement.both_classes:
        labels = {row["label"] for row in rows}
        if len(labels) < 2:
            (only,) = labels
            raise ProtocolError(
                protocol,
                None,
                f"the {split!r} split holds only {_CLASS_NAMES[only]} clips ({len(rows)}); training scores it (EER, "
                "model selection, calibration), which needs both bona fide and spoof clips",
            )
    if requirement.min_samples is None:
        return
    for row in rows:
        samples = clip_samples(row["audio"], requirement.sampling_rate)
        if samples < requirement.min_samples:
            raise ProtocolError(
                protocol,
                row["line"],
                f"{row['audio']} holds {samples} samples at {requirement.sampling_rate} Hz, fewer than the "
                f"{requirement.min_samples} the model needs for one frame; drop the clip from the {split!r} split",
            )


class SplitLeakCheck:
    """Collects the loaded rows of each split of one corpus; `check()` refuses anything used by two splits."""

    def __init__(self):
        self._splits: list[tuple[str, Path, list[dict]]] = []

    def add(self, split: str, protocol: Path, rows: list[dict]) -> None:
        """`rows` are protocol rows with an absolute `audio` path that exists, their `utt_id` and `line`."""
        self._splits.append((split, protocol, rows))

    def check(self) -> None:
        if len({split for split, _, _ in self._splits}) < 2:
            return
        self._check_ids()
        by_size = self._check_files()
        self._check_contents(by_size)

    def _where(self, index: int, row: dict) -> str:
        split, protocol, _ = self._splits[index]
        return f"{row['audio']} of the {split!r} split ({protocol}:{row['line']})"

    def _refuse(self, index: int, row: dict, message: str) -> None:
        _, protocol, _ = self._splits[index]
        raise ProtocolError(protocol, row["line"], f"{message}; a clip may be used by one split only")

    def _rows(self):
        for index, (_, _, rows) in enumerate(self._splits):
            for row in rows:
                yield index, row

    def _check_ids(self) -> None:
        first: dict[str, tuple[int, dict]] = {}
        for index, row in self._rows():
            other, earlier = first.setdefault(row["utt_id"], (index, row))
            if other != index:
                self._refuse(
                    index,
                    row,
                    f"utterance id {row['utt_id']!r} of {row['audio']} is also {self._where(other, earlier)}",
                )

    def _check_files(self) -> dict[int, list[tuple[int, dict]]]:
        """Same device and inode in two splits; returns the rows grouped by file size for the content check."""
        first: dict[tuple[int, int], tuple[int, dict]] = {}
        by_size: dict[int, list[tuple[int, dict]]] = {}
        for index, row in self._rows():
            status = os.stat(row["audio"])
            other, earlier = first.setdefault((status.st_dev, status.st_ino), (index, row))
            if other != index:
                self._refuse(index, row, f"{row['audio']} is the same file as {self._where(other, earlier)}")
            if other == index and earlier is row:
                by_size.setdefault(status.st_size, []).append((index, row))
        return by_size

    def _check_contents(self, by_size: dict[int, list[tuple[int, dict]]]) -> None:
        """Equal bytes in two splits. Only files whose size equals that of a file in another split are read: first a
        fingerprint (4 KiB at the start and 4 KiB in the middle), then, where fingerprints agree, the whole file."""
        for group in by_size.values():
            candidates = _shared_by_splits(group, lambda path: b"")
            for digest in (_fingerprint, _whole_file_digest):
                candidates = [shared for bucket in candidates for shared in _shared_by_splits(bucket, digest)]
            if candidates:
                (index, row), *rest = candidates[0]
                other, copy = next(entry for entry in rest if entry[0] != index)
                self._refuse(other, copy, f"{copy['audio']} has the same content as {self._where(index, row)}")


def _shared_by_splits(entries: list[tuple[int, dict]], key) -> list[list[tuple[int, dict]]]:
    """Group (split index, row) entries by `key(path)`; keep the groups that hold rows of two or more splits."""
    groups: dict[bytes, list[tuple[int, dict]]] = {}
    for entry in entries:
        groups.setdefault(key(entry[1]["audio"]), []).append(entry)
    return [group for group in groups.values() if len({index for index, _ in group}) > 1]


def _fingerprint(path: str) -> bytes:
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(_FINGERPRINT_BYTES)
        handle.seek(size // 2)
        return hashlib.blake2b(head + handle.read(_FINGERPRINT_BYTES), digest_size=20).digest()


def _whole_file_digest(path: str) -> bytes:
    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.digest()
