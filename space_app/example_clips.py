"""Example clips for the demo: a few bona fide and spoof clips from a corpus in the ASVspoof 5 layout.

The folder is `MOLEX_EXAMPLES_DIR` (or `--examples_dir`), else the first of `DEFAULT_EXAMPLE_DIRS` that exists.
In the ASVspoof 5 layout (the mini corpus the main job builds) the protocols say which clip is which: we take the
first uncoded bona fide clips and one uncoded clip for each of the first few attacks of the eval protocol (dev or
train when there is no eval). A folder without protocols (say, an `examples/` folder shipped with a Space) gives
its audio files, labelled by file name. Examples are a convenience: anything missing or malformed just means fewer
examples, with a warning in the log, never a failed start.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path


__all__ = ["DEFAULT_EXAMPLE_DIRS", "ExampleClip", "example_clips", "find_examples_dir"]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EXAMPLE_DIRS = ("outputs/main/corpus", "outputs/mini_corpus", "data/mini_corpus")
# (protocol file, audio folder) in order of preference: the eval split holds the attacks unseen in training.
ASVSPOOF5_SPLITS = (
    ("ASVspoof5.eval.track_1.tsv", "flac_E_eval"),
    ("ASVspoof5.dev.track_1.tsv", "flac_D"),
    ("ASVspoof5.train.tsv", "flac_T"),
)
AUDIO_SUFFIXES = (".flac", ".wav", ".ogg", ".mp3")


@dataclass(frozen=True)
class ExampleClip:
    path: str
    label: str  # shown under the example, e.g. "bona fide" or "spoof (A07)"


def find_examples_dir(explicit: str | None = None) -> Path | None:
    """The examples folder: `explicit`, else `MOLEX_EXAMPLES_DIR`, else the first default that exists."""
    chosen = explicit or os.environ.get("MOLEX_EXAMPLES_DIR")
    if chosen:
        if not Path(chosen).is_dir():
            logger.warning("examples folder %s does not exist: no examples", chosen)
            return None
        return Path(chosen)
    for relative in DEFAULT_EXAMPLE_DIRS:
        for base in (REPO_ROOT, Path.cwd()):
            if (base / relative).is_dir():
                return base / relative
    return None


def example_clips(root: str | Path | None, bonafide: int = 2, attacks: int = 3) -> list[ExampleClip]:
    """Up to `bonafide` bona fide clips and one clip of each of up to `attacks` attacks, bona fide first."""
    if root is None:
        return []
    root = Path(root)
    for protocol_name, audio_dir in ASVSPOOF5_SPLITS:
        for protocol in (root / protocol_name, root / "ASVspoof5_protocols" / protocol_name):
            if protocol.is_file():
                return _from_protocol(protocol, root / audio_dir, bonafide, attacks)
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    return [ExampleClip(str(p), p.stem) for p in files[: bonafide + attacks]]


def _from_protocol(protocol: Path, audio_dir: Path, bonafide: int, attacks: int) -> list[ExampleClip]:
    """Read the 10-column ASVspoof 5 protocol (... FLAC_FILE_NAME ... CODEC ... ATTACK_LABEL KEY ...)."""
    chosen_bonafide, chosen_attacks = [], {}
    try:
        lines = protocol.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        logger.warning("cannot read %s (%s): no examples", protocol, error)
        return []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 10:
            logger.warning("%s:%d: expected 10 columns, got %d: line skipped", protocol, number, len(fields))
            continue
        name, codec, attack, key = fields[1], fields[3], fields[7], fields[8]
        path = audio_dir / f"{name}.flac"
        if codec not in ("-", "C00") or not path.is_file():
            continue
        if key == "bonafide" and len(chosen_bonafide) < bonafide:
            chosen_bonafide.append(ExampleClip(str(path), "bona fide"))
        elif key == "spoof" and attack not in chosen_attacks and len(chosen_attacks) < attacks:
            chosen_attacks[attack] = ExampleClip(str(path), f"spoof ({attack})")
    return chosen_bonafide + list(chosen_attacks.values())
