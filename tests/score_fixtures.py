"""What the `molex-score` and handler tests share: a tiny saved model with decisive scores, clips, and reading the
score table the way a user's script would (the header spelled out here, never taken from the code under test)."""

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from conftest import randomize_experts, tiny_backbone_config

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification


# The documented column order of the molex-score TSV and of the ASVspoof 5 score file, spelled out literally.
TSV_HEADER = "path\tscore\tp_bonafide\tverdict\tduration_s\tnovelty\tnearest\ttop_experts"
OFFICIAL_HEADER = "filename\tcm-score"
ERRORS_HEADER = "path\terror"


def save_cli_model(folder: Path) -> Path:
    """A tiny wav2vec2 MoLEx (crop 0.5 s, calibrated) whose scores are far from 0, so a sign error shows."""
    torch.manual_seed(0)
    config = MoLExConfig(
        backbone_config=tiny_backbone_config("wav2vec2"),
        adapter=MoLExAdapterConfig(num_experts=4, top_k=2, r=4),
        crop_samples=8_000,
        calibration={"scale": 1.5, "bias": 0.25},
    )
    model = MoLExForAudioClassification(config)
    randomize_experts(model, std=0.5, seed=2)
    with torch.no_grad():
        model.classifier.out_proj.weight.mul_(100.0)
    model.save_pretrained(folder)
    return folder


def tone(seconds: float, rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return 0.3 * np.sin(2 * np.pi * (150 + 30 * seed) * t) + 0.05 * rng.standard_normal(t.size)


def write_tone(path: str | bytes | os.PathLike, seconds: float, seed: int, rate: int = 16_000) -> None:
    """A clip at `path`; bytes paths (non-UTF-8 names) are written through soundfile's bytes support."""
    sf.write(os.fsencode(path) if isinstance(path, bytes) else str(path), tone(seconds, rate, seed), rate)


def read_table(path: Path, header: str) -> list[list[str]]:
    """The data rows of a score table as field lists, after checking its first line is exactly `header`."""
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), f"{path} does not end with a newline"
    lines = text[:-1].split("\n")  # split on LF only: the format's one line separator
    assert lines[0] == header
    return [line.split("\t") for line in lines[1:]]


def unescape_path(field: str) -> bytes:
    """The file name bytes of an escaped `path` field, decoded by the documented convention (README): `\\\\`,
    `\\t`, `\\n`, `\\r`, `\\xHH` (one byte of a name that is not UTF-8, or an ASCII control character) and `\\uXXXX`
    (a Unicode line separator); written independently of the code under test."""
    out, i = bytearray(), 0
    while i < len(field):
        char = field[i]
        if char != "\\":
            out += char.encode("utf-8")
            i += 1
            continue
        code = field[i + 1]
        if code in "\\tnr":
            out += {"\\": b"\\", "t": b"\t", "n": b"\n", "r": b"\r"}[code]
            i += 2
        elif code == "x":
            out.append(int(field[i + 2 : i + 4], 16))
            i += 4
        elif code == "u":
            out += chr(int(field[i + 2 : i + 6], 16)).encode("utf-8")
            i += 6
        else:
            raise AssertionError(f"unknown escape \\{code} in {field!r}")
    return bytes(out)
