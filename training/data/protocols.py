"""Parsers for the protocol (label) files of the corpora we train and score on.

Every parser returns a list of plain row dicts with the same keys (`ROW_KEYS`) plus `audio` (the audio path as
written in the protocol, resolved later by `training.data.loaders`) and `line` (1-based line number, kept for error
messages). Every malformed line raises `ProtocolError` naming the file and the line; nothing is skipped silently.

Value conventions shared by all corpora:
- `label`: 1 = bonafide, 0 = spoof (the model's id2label {0: spoof, 1: bonafide}).
- `attack`: the attack id ("A26"), "bonafide" for bona fide rows, "unknown" for spoof rows whose corpus has no ids.
- `codec`: "none" for uncoded audio (ASVspoof 5 writes "-", its paper says "C00"); `codec_q` is 0 when uncoded.
- `codec_seed`: the uncoded source utterance; an uncoded row is its own seed, so grouping by `codec_seed` keeps
  every coded copy of one utterance together (useful for splits and bootstrap confidence intervals).
- "none" means "not applicable" (a bona fide row has no attack tag); "unknown" means the corpus does not say.
"""

import csv
import logging
import os
from pathlib import Path


__all__ = [
    "ROW_KEYS",
    "ProtocolError",
    "check_unique_ids",
    "parse_label",
    "read_asvspoof5_protocol",
    "read_asvspoof2019_protocol",
    "read_in_the_wild_meta",
    "read_label_csv",
    "require_rows",
    "resolve_audio_paths",
]

logger = logging.getLogger(__name__)

ROW_KEYS = ("utt_id", "label", "speaker", "gender", "attack", "attack_tag", "codec", "codec_q", "codec_seed")
ASVSPOOF5_COLUMNS = "SPEAKER_ID FLAC_FILE_NAME GENDER CODEC CODEC_Q CODEC_SEED ATTACK_TAG ATTACK_LABEL KEY TMP".split()
ASVSPOOF2019_COLUMNS = "SPEAKER_ID AUDIO_FILE_NAME - SYSTEM_ID KEY".split()
_BONAFIDE = {"bonafide", "bona-fide", "bona_fide", "bona fide", "1"}
_SPOOF = {"spoof", "0"}
_UNCODED = {"-", "none", "c00", ""}


class ProtocolError(ValueError):
    """A protocol or metadata file that cannot be trusted; the message starts with `file:line`."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        self.path, self.line = str(path), line
        super().__init__(f"{path}:{line}: {message}" if line is not None else f"{path}: {message}")


def parse_label(value: str, path: str | Path, line: int) -> int:
    """Map the spellings used across corpora (bonafide, bona-fide, spoof, 1, 0) to 1 = bonafide / 0 = spoof."""
    key = value.strip().lower()
    if key in _BONAFIDE:
        return 1
    if key in _SPOOF:
        return 0
    raise ProtocolError(
        path,
        line,
        f"label {value!r} is neither bonafide (bonafide/bona-fide/1) nor spoof (spoof/0); a fractional or other "
        "number is not a class",
    )


def require_rows(rows: list[dict], path: str | Path) -> list[dict]:
    """Refuse a protocol without data rows (empty, blank or header-only): it would give a 0-row split that fails
    much later ("num_samples=0") without naming the file."""
    if not rows:
        raise ProtocolError(path, None, "the protocol lists no utterances (the file is empty or holds only a header)")
    return rows


def _codec(codec: str, quality: str, path: Path, line: int) -> tuple[str, int]:
    """Normalise ASVspoof 5's codec fields: "-"/C00 → ("none", 0); "C05", "2" → ("C05", 2)."""
    name = "none" if codec.strip().lower() in _UNCODED else codec.strip()
    if quality.strip() in ("-", ""):
        return name, 0
    try:
        return name, int(quality)
    except ValueError:
        raise ProtocolError(path, line, f"CODEC_Q must be an integer or '-', got {quality!r}") from None


def _lines(path: Path):
    """Yield (line_number, stripped_text) for non-blank lines; blank lines carry no data."""
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if text.strip():
                yield number, text.strip()


def _attack(key: int, attack: str, path: Path, line: int) -> str:
    """Cross-check the key against the attack field: a spoof row needs an attack id, a bona fide row none."""
    if key == 1 and attack not in ("bonafide", "-"):
        raise ProtocolError(path, line, f"KEY is bonafide but the attack field is {attack!r}")
    if key == 0 and attack in ("bonafide", "-"):
        raise ProtocolError(path, line, f"KEY is spoof but the attack field is {attack!r}")
    return "bonafide" if key == 1 else attack


def read_asvspoof5_protocol(path: str | Path) -> list[dict]:
    """Parse a track-1 / train protocol of the ASVspoof 5 release.

    The `.tsv` files are single-space separated, headerless, 10 columns (`ASVSPOOF5_COLUMNS`), e.g.
    `E_1607 E_0009538969 M C05 2 E_0009486171 AC1 A26 spoof -`. Any run of whitespace is accepted as separator.
    """
    path = Path(path)
    rows = []
    for line, text in _lines(path):
        fields = text.split()
        if len(fields) != len(ASVSPOOF5_COLUMNS):
            raise ProtocolError(
                path,
                line,
                f"expected 10 columns ({' '.join(ASVSPOOF5_COLUMNS)}), got {len(fields)}: {text!r}",
            )
        speaker, utt_id, gender, codec, codec_q, codec_seed, attack_tag, attack, key, _ = fields
        if key not in ("bonafide", "spoof"):
            raise ProtocolError(path, line, f"KEY (column 9) must be 'bonafide' or 'spoof', got {key!r}")
        label = parse_label(key, path, line)
        codec, codec_q = _codec(codec, codec_q, path, line)
        rows.append(
            {
                "utt_id": utt_id,
                "audio": f"{utt_id}.flac",
                "label": label,
                "speaker": speaker,
                "gender": gender,
                "attack": _attack(label, attack, path, line),
                "attack_tag": "none" if attack_tag == "-" else attack_tag,
                "codec": codec,
                "codec_q": codec_q,
                "codec_seed": utt_id if codec_seed == "-" else codec_seed,
                "line": line,
            }
        )
    return require_rows(rows, path)


def read_asvspoof2019_protocol(path: str | Path) -> list[dict]:
    """Parse an ASVspoof 2019 LA CM protocol: `SPEAKER_ID AUDIO_FILE_NAME - SYSTEM_ID KEY` (system "-" = bona fide)."""
    path = Path(path)
    rows = []
    for line, text in _lines(path):
        fields = text.split()
        if len(fields) != len(ASVSPOOF2019_COLUMNS):
            raise ProtocolError(
                path, line, f"expected 5 columns ({' '.join(ASVSPOOF2019_COLUMNS)}), got {len(fields)}: {text!r}"
            )
        speaker, utt_id, _, system, key = fields
        if key not in ("bonafide", "spoof"):
            raise ProtocolError(path, line, f"KEY (column 5) must be 'bonafide' or 'spoof', got {key!r}")
        label = parse_label(key, path, line)
        rows.append(
            {
                "utt_id": utt_id,
                "audio": f"{utt_id}.flac",
                "label": label,
                "speaker": speaker,
                "gender": "unknown",
                "attack": _attack(label, system, path, line),
                "attack_tag": "unknown",
                "codec": "none",
                "codec_q": 0,
                "codec_seed": utt_id,
                "line": line,
            }
        )
    return require_rows(rows, path)


def _csv_rows(path: Path, required: tuple[str, ...]):
    """Yield (line_number, row_dict) from a headed CSV, after checking the header has the `required` columns."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in required if name not in header]
        if missing:
            raise ProtocolError(path, 1, f"header {header} lacks the column(s) {missing}")
        reader.fieldnames = header
        for row in reader:
            if None in row or any(value is None for value in row.values()):
                raise ProtocolError(path, reader.line_num, f"expected {len(header)} fields ({','.join(header)})")
            if any(value.strip() for value in row.values()):
                yield reader.line_num, {name: value.strip() for name, value in row.items()}


def read_in_the_wild_meta(path: str | Path) -> list[dict]:
    """Parse In-the-Wild's `meta.csv` (`file,speaker,label`, label bona-fide/spoof; files sit beside it)."""
    path = Path(path)
    rows = []
    for line, row in _csv_rows(path, ("file", "speaker", "label")):
        if not row["file"]:
            raise ProtocolError(path, line, "empty 'file' field")
        label = parse_label(row["label"], path, line)
        utt_id = Path(row["file"]).stem
        rows.append(
            {
                "utt_id": utt_id,
                "audio": row["file"],
                "label": label,
                "speaker": row["speaker"] or "unknown",
                "gender": "unknown",
                "attack": "bonafide" if label == 1 else "unknown",
                "attack_tag": "unknown",
                "codec": "unknown",
                "codec_q": 0,
                "codec_seed": utt_id,
                "line": line,
            }
        )
    return require_rows(rows, path)


def read_label_csv(path: str | Path) -> list[dict]:
    """Parse a generic CSV: required `path,label`; optional `utt_id,split` and any of `ROW_KEYS`.

    `utt_id` defaults to the file stem. Rows without an attack get "bonafide"/"unknown"; missing codec → "unknown".
    Returned rows also carry `split` ("" when the CSV has no split column).
    """
    path = Path(path)
    rows = []
    for line, row in _csv_rows(path, ("path", "label")):
        if not rows and (ignored := sorted(set(row) - {"path", "split", *ROW_KEYS})):
            logger.info("%s: ignoring the column(s) %s", path, ignored)
        if not row["path"]:
            raise ProtocolError(path, line, "empty 'path' field")
        label = parse_label(row["label"], path, line)
        utt_id = row.get("utt_id") or Path(row["path"]).stem
        codec, codec_q = _codec(row.get("codec") or "unknown", row.get("codec_q") or "-", path, line)
        attack = row.get("attack", "")
        attack = _attack(label, attack, path, line) if attack else ("bonafide" if label == 1 else "unknown")
        rows.append(
            {
                "utt_id": utt_id,
                "audio": row["path"],
                "label": label,
                "speaker": row.get("speaker") or "unknown",
                "gender": row.get("gender") or "unknown",
                "attack": attack,
                "attack_tag": row.get("attack_tag") or "unknown",
                "codec": codec,
                "codec_q": codec_q,
                "codec_seed": row.get("codec_seed") or utt_id,
                "split": row.get("split", ""),
                "line": line,
            }
        )
    return require_rows(rows, path)


def check_unique_ids(rows: list[dict], path: str | Path) -> None:
    """Raise on a repeated utterance id: two rows for one file would double-count it in every metric."""
    first_line: dict[str, int] = {}
    for row in rows:
        seen = first_line.setdefault(row["utt_id"], row["line"])
        if seen != row["line"]:
            raise ProtocolError(
                path, row["line"], f"duplicate utterance id {row['utt_id']!r} (first seen on line {seen})"
            )


def resolve_audio_paths(rows: list[dict], protocol: Path, audio_root: str, absolute_ok: bool) -> None:
    """Turn each row's audio path into an absolute, normalised path, in place, refusing two kinds of rows.

    - A path that leaves `audio_root` (`../flac_D/D_...`, `/etc/passwd`): a protocol names files *of its split*, and
      following such a row would silently read another split's audio (dev into train). The check is on the path
      as written, after `..` is collapsed; symlinks inside the folder are followed as the release may use them.
      Only a CSV (`absolute_ok`) may name absolute paths anywhere: there the user describes the corpus explicitly.
    - A file listed twice (under any spelling or utterance id): it would count twice in every metric, and with
      opposite labels it is a contradiction.
    """
    root_prefix = audio_root.rstrip(os.sep) + os.sep
    first: dict[str, dict] = {}
    for row in rows:
        written = row["audio"]
        path = os.path.normpath(os.path.join(audio_root, written))  # an absolute `written` wins the join
        if not (absolute_ok and os.path.isabs(written)) and not path.startswith(root_prefix):
            raise ProtocolError(
                protocol,
                row["line"],
                f"audio {written!r} resolves to {path}, outside the split's audio folder {audio_root}; a protocol "
                "may only name files inside its own split's folder",
            )
        earlier = first.setdefault(path, row)
        if earlier is not row:
            clash = " with the opposite label" if earlier["label"] != row["label"] else ""
            raise ProtocolError(
                protocol,
                row["line"],
                f"{path} is listed again (first on line {earlier['line']} as {earlier['utt_id']!r}){clash}; each "
                "file may appear once",
            )
        row["audio"] = path
