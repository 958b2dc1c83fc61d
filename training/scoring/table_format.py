"""The text format of `molex-score`'s tables: UTF-8, one line per file ending in LF, fields separated by TAB.

Text fields (the path, the nearest signature, the experts, an error message) are escaped so that no value can
hold a field or line separator, and any file name, including one that is not UTF-8, round-trips:

    \\\\ a backslash    \\t TAB    \\n LF    \\r CR
    \\xHH  one byte HH of the name: a byte that is not part of valid UTF-8 (Python's surrogateescape form), or an
          ASCII control character
    \\uXXXX  a Unicode line or paragraph separator (U+0085, U+2028, U+2029), or a lone surrogate

Everything else is written as it is (so ordinary names read as themselves). This is the "linear TSV" convention
(as in PostgreSQL's text COPY format), not RFC 4180 quoting: a row is always exactly one line, so a killed run
leaves at most one torn last line, which `--resume` drops. The ASVspoof 5 score file has no escaping: a file stem that
would need any is refused (listed in `.errors.tsv`) instead of written under a name no key file holds.
"""

import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import torch

from training.metrics.score_files import SCORE_HEADER


TSV_COLUMNS = ("path", "score", "p_bonafide", "verdict", "duration_s", "novelty", "nearest", "top_experts")
OFFICIAL_COLUMNS = SCORE_HEADER  # ("filename", "cm-score")
ERROR_COLUMNS = ("path", "error")

logger = logging.getLogger("molex.score")
_UNWRITABLE = "\x00-\x1f\x7f\x85\u2028\u2029\ud800-\udfff"  # separators, control characters, undecodable bytes
_NEEDS_ESCAPE = re.compile(f"[\\\\{_UNWRITABLE}]")
_UNWRITABLE_CHAR = re.compile(f"[{_UNWRITABLE}]")
_ESCAPE = re.compile(r"\\(?:(\\)|([tnr])|x([0-9a-f]{2})|u([0-9a-f]{4})|(.?))", re.DOTALL)
_NAMED = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNNAMED = {"t": "\t", "n": "\n", "r": "\r"}


def _escape_char(match: re.Match) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a non-UTF-8 name, as os.fsdecode gives it
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def escape_field(text: str) -> str:
    """`text` with backslashes, separators, control characters and undecodable bytes escaped (module docstring)."""
    return _NEEDS_ESCAPE.sub(_escape_char, text)


def _unescape_match(match: re.Match) -> str:
    backslash, named, byte, code, unknown = match.groups()
    if unknown is not None:
        raise ValueError(f"unknown escape {match.group()!r}")
    if backslash:
        return "\\"
    if named:
        return _UNNAMED[named]
    if byte:
        value = int(byte, 16)
        return chr(value) if value < 0x80 else chr(0xDC00 + value)
    return chr(int(code, 16))


def unescape_field(text: str) -> str:
    """The inverse of `escape_field`; a `str` that `os.fsencode` turns back into the file name's bytes."""
    return _ESCAPE.sub(_unescape_match, text)


def official_name_problem(stem: str) -> str | None:
    """Why `stem` cannot be a trial name of the (unescaped) ASVspoof 5 score file, or None when it can."""
    if not stem or stem != stem.strip():
        problem = "is empty or has whitespace around it"
    elif _UNWRITABLE_CHAR.search(stem):
        problem = "holds a TAB, a line break, a control character or bytes that are not UTF-8"
    else:
        return None
    return f"the file stem '{escape_field(stem)}' {problem}: it cannot be an official trial name (--official)"


def path_key(path: Path) -> str:
    """A file's key in the TSV (its `path` field): the path as given, escaped."""
    return escape_field(str(path))


def format_line(fields: Sequence[str]) -> str:
    return "\t".join(fields) + "\n"


def top_experts(expert_usage: torch.Tensor, router_names: list[str], top_k: int) -> str:
    """`layer_0:1+3 layer_1:0+2`: per router, the `top_k` experts with the largest usage."""
    parts = []
    for name, usage in zip(router_names, expert_usage, strict=True):
        chosen = sorted(torch.topk(usage, k=min(top_k, usage.numel())).indices.tolist())
        parts.append(f"{name}:{'+'.join(str(e) for e in chosen)}")
    return " ".join(parts)


def tsv_fields(path: Path, result, top_k: int) -> list[str]:
    """The TSV row of one scored file, in `TSV_COLUMNS` order."""
    if result.silent:
        return [path_key(path), "", "", "near-silent", f"{result.duration:.3f}", "", "", ""]
    novelty = result.novelty
    return [
        path_key(path),
        f"{result.score:.6f}",
        f"{result.bonafide_probability:.6f}",
        result.verdict,
        f"{result.duration:.3f}",
        "" if novelty is None else f"{novelty.distance:.4f}",
        "" if novelty is None else escape_field(str(novelty.nearest)),
        escape_field(top_experts(result.expert_usage, result.router_names, top_k)),
    ]


def official_fields(path: Path, result) -> list[str]:
    """The ASVspoof 5 score-file row: the file stem and the score (higher = more bona fide), unchanged."""
    return [path.stem, f"{result.score:.6f}"]


def open_table_for_append(path: Path) -> TextIO:
    """The table file, positioned at its end, for rows (no newline translation: LF is the line separator)."""
    return open(path, "a", encoding="utf-8", newline="")


def write_header(path: Path, columns: Sequence[str]) -> None:
    """Start `path` afresh with only the header line (truncating what it held)."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(format_line(columns))


def iter_rows(path: Path, columns: Sequence[str], repair: bool = False) -> Iterator[tuple[str, str]]:
    """(key, line) for each complete row of the table at `path` (key: the first field; line: with its LF).

    The header must be `columns`, else ValueError naming the file: a file molex-score did not write is never
    changed. A torn last line (a killed run) is skipped, and cut off the file when `repair`. A complete line with the
    wrong number of fields, bytes that are not UTF-8 or a key seen twice raise ValueError naming the file and line."""
    header = format_line(columns).encode()
    with open(path, "rb") as handle:
        data = handle.read()
    complete = data[: data.rfind(b"\n") + 1]
    if not data.startswith(header) and not (len(complete) == 0 and header.startswith(data)):
        first = data[: data.find(b"\n")] if b"\n" in data else data
        raise ValueError(f"{path}: not a table molex-score writes with these options: expected the header "
                         f"{'<TAB>'.join(columns)!r}, found {first[:200].decode(errors='replace')!r}")  # fmt: skip
    if repair and len(complete) < len(data):
        logger.warning("%s: dropped an incomplete last line left by an interrupted run", path)
        with open(path, "r+b") as handle:
            handle.truncate(len(complete) if complete else 0)
        if not complete:
            write_header(path, columns)
    try:
        text = complete.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: byte {error.start} is not UTF-8; molex-score did not write this file") from None
    seen: dict[str, int] = {}
    for number, line in enumerate(text.split("\n")[1:-1], start=2):
        fields = line.split("\t")
        if len(fields) != len(columns):
            raise ValueError(f"{path}:{number}: expected {len(columns)} TAB-separated fields, got {len(fields)}")
        if fields[0] in seen:
            raise ValueError(f"{path}:{number}: {fields[0]!r} already has a row (line {seen[fields[0]]})")
        seen[fields[0]] = number
        yield fields[0], line + "\n"


def read_keys(path: Path, columns: Sequence[str]) -> set[str]:
    """The keys of the complete rows of an existing table (read only; see `iter_rows`)."""
    return {key for key, _ in iter_rows(path, columns)} if os.path.exists(path) else set()
