"""Write tiny corpora in the real release formats into a temp dir: audio clips, protocol files, folder layouts.

The protocol lines copy the shape of real ASVspoof 5 / 2019 LA / In-the-Wild lines (see the project notes,
asvspoof5.md §2–3), including codec columns, bona fide dashes and enrolment audio that no protocol lists.
"""

from pathlib import Path

import numpy as np
import soundfile as sf


def write_clip(path: Path, seconds: float = 0.5, sampling_rate: int = 16_000, channels: int = 1, seed: int = 0):
    """Write a deterministic tone + noise clip (format from the suffix: .flac / .wav, 16-bit PCM); return its data."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    wave = 0.3 * np.sin(2 * np.pi * (220 + 40 * seed) * t) + 0.01 * rng.standard_normal(len(t))
    data = wave if channels == 1 else np.stack([wave * (1 + 0.5 * c) for c in range(channels)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sampling_rate, subtype="PCM_16")
    return data


# utt_id → (seconds, sampling rate, channels); the eval split holds the odd ones: 8 kHz and stereo.
ASVSPOOF5_PROTOCOLS = {
    "train": (
        "ASVspoof5.train.tsv",
        [
            "T_4850 T_0000000000 F - - - AC3 A05 spoof -",
            "T_3734 T_0000000011 F - - - - bonafide bonafide -",
            "T_4850 T_0000000012 F - - - AC1 A01 spoof -",
        ],
    ),
    "dev": (
        "ASVspoof5.dev.track_1.tsv",
        [
            "D_0062 D_0000000001 F - - - AC1 A11 spoof -",
            "D_0461 D_0000000190 M - - - - bonafide bonafide -",
        ],
    ),
    "eval": (
        "ASVspoof5.eval.track_1.tsv",
        [
            "E_1607 E_0009538969 M C05 2 E_0009486171 AC1 A26 spoof -",
            "E_1607 E_0009486171 M - 0 - AC1 A26 spoof -",
            "E_0042 E_0000000005 F - 0 - - bonafide bonafide -",
            "E_0042 E_0000000006 F C11 7 E_0000000005 - bonafide bonafide -",
        ],
    ),
}
ASVSPOOF5_AUDIO = {
    "flac_T": {"T_0000000000": (0.5, 16_000, 1), "T_0000000011": (0.25, 16_000, 1), "T_0000000012": (0.75, 16_000, 1)},
    "flac_D": {"D_0000000001": (0.5, 16_000, 1), "D_0000000190": (0.3, 16_000, 1), "D_A0000000562": (0.2, 16_000, 1)},
    "flac_E_eval": {
        "E_0009538969": (0.5, 8_000, 1),
        "E_0009486171": (0.5, 16_000, 2),
        "E_0000000005": (0.4, 16_000, 1),
        "E_0000000006": (0.6, 16_000, 1),
        "E_A0000000001": (0.2, 16_000, 1),
    },
}
ENROLMENT_IDS = ("D_A0000000562", "E_A0000000001")


def write_asvspoof5(root: Path, protocol_folder: str = "", protocols: dict | None = None) -> Path:
    """Write the ASVspoof 5 layout: flac_T/, flac_D/, flac_E_eval/ and the track-1 protocols (in `protocol_folder`)."""
    for seed, (folder, clips) in enumerate(ASVSPOOF5_AUDIO.items()):
        for i, (utt_id, (seconds, rate, channels)) in enumerate(clips.items()):
            write_clip(root / folder / f"{utt_id}.flac", seconds, rate, channels, seed=10 * seed + i)
    for name, lines in (protocols or ASVSPOOF5_PROTOCOLS).values():
        write_lines(root / protocol_folder / name, lines)
    return root


ASVSPOOF2019_PROTOCOLS = {
    "train": (
        "ASVspoof2019.LA.cm.train.trn.txt",
        ["LA_0079 LA_T_1138215 - - bonafide", "LA_0079 LA_T_1271820 - A01 spoof"],
    ),
    "dev": (
        "ASVspoof2019.LA.cm.dev.trl.txt",
        ["LA_0069 LA_D_1047731 - - bonafide", "LA_0069 LA_D_1105538 - A04 spoof"],
    ),
    "eval": (
        "ASVspoof2019.LA.cm.eval.trl.txt",
        ["LA_0039 LA_E_2834763 - A11 spoof", "LA_0014 LA_E_8877452 - - bonafide"],
    ),
}


def write_asvspoof2019_la(root: Path) -> Path:
    """Write `root/LA/` with the three CM protocols, the flac folders and one ASV enrolment file per dev/eval.
    Every clip has its own seed: two splits holding the same bytes would be refused as a leak."""
    la = root / "LA"
    for seed, (split, (name, lines)) in enumerate(ASVSPOOF2019_PROTOCOLS.items()):
        write_lines(la / "ASVspoof2019_LA_cm_protocols" / name, lines)
        for i, line in enumerate(lines):
            write_clip(la / f"ASVspoof2019_LA_{split}" / "flac" / f"{line.split()[1]}.flac", 0.3, seed=10 * seed + i)
        if split != "train":
            write_clip(la / f"ASVspoof2019_LA_{split}" / "flac" / f"LA_{split[0].upper()}_0000001.flac", 0.2)
    return root


IN_THE_WILD_META = [
    "file,speaker,label",
    "0.wav,Alec Guinness,spoof",
    "1.wav,Alec Guinness,bona-fide",
    "2.wav,Barack Obama,spoof",
]


def write_in_the_wild(root: Path) -> Path:
    """Write In-the-Wild's layout: meta.csv beside the wav files (16 kHz here)."""
    write_lines(root / "meta.csv", IN_THE_WILD_META)
    for i in range(3):
        write_clip(root / f"{i}.wav", 0.4, seed=i)
    return root


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
