"""Score and key files in the format of the official ASVspoof 5 evaluation package.

Both are tab-separated text with a header line, one trial per line:

    filename<TAB>cm-score            filename<TAB>cm-label
    E_0000000001<TAB>1.2345          E_0000000001<TAB>bonafide
    E_0000000002<TAB>-3.21           E_0000000002<TAB>spoof

so a score file we write can be handed to `evaluation.py --m t1 --cm scores.tsv --cm_keys keys.tsv` unchanged. Reading
is strict where the official pandas reader is lenient: a wrong header, a line with the wrong number of fields, a
score that is not a finite number, a duplicated filename or a score/key mismatch is an error naming the file and
line (or the utterances), never a silently dropped or NaN-filled trial. Blank lines are skipped.
"""

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from training.metrics.asvspoof_metrics import C_FA, C_MISS, P_SPOOF, compute_metrics


SCORE_HEADER = ("filename", "cm-score")
KEY_HEADER = ("filename", "cm-label")
KEY_LABELS = {"bonafide": 1, "spoof": 0}
_LABEL_NAMES = {value: name for name, value in KEY_LABELS.items()}
_SHOW = 5  # how many names an error message lists


def _check_name(name: object, where: str) -> str:
    text = str(name)
    if not text or text != text.strip() or any(char in text for char in "\t\r\n"):
        raise ValueError(f"{where}: filename {text!r} is empty or contains whitespace around it, a tab or a newline")
    return text


def _write_table(path: str | Path, header: tuple[str, str], rows: Iterable[tuple[str, str]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as file:
        file.write("\t".join(header) + "\n")
        file.writelines(f"{name}\t{value}\n" for name, value in rows)
    return path


def _read_table(path: str | Path, header: tuple[str, str], parse: Callable[[str, str], object]) -> dict[str, object]:
    """{filename: parse(value, where)} in file order; every problem raises ValueError naming `path` and the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    table: dict[str, object] = {}
    first_line: dict[str, int] = {}
    with path.open(encoding="utf-8") as file:
        header_seen = False
        for line_number, line in enumerate(file, start=1):
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            fields = [field.strip() for field in text.split("\t")]
            where = f"{path}:{line_number}"
            if not header_seen:
                if tuple(fields) != header:
                    raise ValueError(f"{where}: expected the header {'<TAB>'.join(header)}, got {text!r}")
                header_seen = True
                continue
            if len(fields) != 2:
                raise ValueError(
                    f"{where}: expected 2 tab-separated fields ({', '.join(header)}), got {len(fields)}: {text!r}"
                )
            name, value = fields
            if not name:
                raise ValueError(f"{where}: empty filename")
            if name in table:
                raise ValueError(f"{where}: filename {name!r} already appeared on line {first_line[name]}")
            table[name] = parse(value, f"{where} ({name})")
            first_line[name] = line_number
    if not header_seen:
        raise ValueError(f"{path}: file is empty, expected the header {'<TAB>'.join(header)}")
    if not table:
        raise ValueError(f"{path}: no trials after the header")
    return table


def _parse_score(value: str, where: str) -> float:
    try:
        score = float(value)
    except ValueError:
        raise ValueError(f"{where}: score {value!r} is not a number") from None
    if not math.isfinite(score):
        raise ValueError(f"{where}: score is {value!r}; scores must be finite")
    return score


def _parse_label(value: str, where: str) -> int:
    if value not in KEY_LABELS:
        raise ValueError(f"{where}: label {value!r} is neither 'bonafide' nor 'spoof'")
    return KEY_LABELS[value]


def write_score_file(path: str | Path, filenames: Iterable[str], scores: ArrayLike) -> Path:
    """Write `filename<TAB>cm-score` lines; scores keep full float precision (repr), so reading them back is exact."""
    names = [_check_name(name, str(path)) for name in filenames]
    values = np.asarray(scores, dtype=np.float64)
    if values.shape != (len(names),):
        raise ValueError(f"{path}: {len(names)} filenames but scores of shape {values.shape}")
    _check_unique(names, str(path))
    for name, value in zip(names, values, strict=True):
        if not math.isfinite(value):
            raise ValueError(f"{path}: score of {name!r} is {value}; scores must be finite")
    return _write_table(
        path, SCORE_HEADER, ((name, repr(float(value))) for name, value in zip(names, values, strict=True))
    )


def write_key_file(path: str | Path, filenames: Iterable[str], labels: ArrayLike) -> Path:
    """Write `filename<TAB>cm-label` lines from labels 1 (bonafide) / 0 (spoof)."""
    names = [_check_name(name, str(path)) for name in filenames]
    values = np.asarray(labels)
    if values.shape != (len(names),):
        raise ValueError(f"{path}: {len(names)} filenames but labels of shape {values.shape}")
    _check_unique(names, str(path))
    words = []
    for name, value in zip(names, values.tolist(), strict=True):
        if value not in _LABEL_NAMES:
            raise ValueError(f"{path}: label of {name!r} is {value!r}; labels must be 1 (bonafide) or 0 (spoof)")
        words.append(_LABEL_NAMES[value])
    return _write_table(path, KEY_HEADER, zip(names, words, strict=True))


def _check_unique(names: list[str], where: str) -> None:
    duplicates = [name for name, count in Counter(names).items() if count > 1]
    if duplicates:
        raise ValueError(f"{where}: {len(duplicates)} duplicated filename(s), e.g. {duplicates[:_SHOW]}")


def read_score_file(path: str | Path) -> dict[str, float]:
    """{filename: score} in file order."""
    return _read_table(path, SCORE_HEADER, _parse_score)


def read_key_file(path: str | Path) -> dict[str, int]:
    """{filename: 1 (bonafide) or 0 (spoof)} in file order."""
    return _read_table(path, KEY_HEADER, _parse_label)


def align_scores_and_keys(
    scores: Mapping[str, float], keys: Mapping[str, int], *, scores_name: str = "scores", keys_name: str = "keys"
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(filenames, scores, labels) in score order, after checking that both list exactly the same utterances."""
    only_scores = [name for name in scores if name not in keys]
    only_keys = [name for name in keys if name not in scores]
    if only_scores or only_keys:
        raise ValueError(
            f"{scores_name} and {keys_name} list different utterances: "
            f"{len(only_scores)} only in {scores_name} (e.g. {only_scores[:_SHOW]}), "
            f"{len(only_keys)} only in {keys_name} (e.g. {only_keys[:_SHOW]}); "
            f"{len(scores)} scores, {len(keys)} keys"
        )
    names = list(scores)
    return names, np.array([scores[name] for name in names]), np.array([keys[name] for name in names])


def load_scores_and_labels(score_path: str | Path, key_path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read a score file and a key file and join them on filename: (filenames, scores, labels 1/0)."""
    return align_scores_and_keys(
        read_score_file(score_path), read_key_file(key_path), scores_name=str(score_path), keys_name=str(key_path)
    )


def evaluate_score_file(
    score_path: str | Path,
    key_path: str | Path,
    *,
    p_spoof: float = P_SPOOF,
    c_miss: float = C_MISS,
    c_fa: float = C_FA,
) -> dict[str, float]:
    """What `evaluation.py --m t1` reports, as {"eer", "min_dcf", "act_dcf", "cllr"} (EER as a fraction)."""
    _, scores, labels = load_scores_and_labels(score_path, key_path)
    return compute_metrics(scores, labels, p_spoof=p_spoof, c_miss=c_miss, c_fa=c_fa)
