"""Build a small, licence-clean spoofing corpus in the exact ASVspoof 5 layout, offline, from Debian packages.

    python -m training.corpus.make_mini_corpus OUT_DIR [--per-attack 100] [--bonafide-per-split 200] [--seed 0] [--workers 2]

Why: tests of the training pipeline need real speech that is neither noise nor copyrighted, read by the *same*
loader as the real ASVspoof 5 release. So the output is ``flac_T/``, ``flac_D/``, ``flac_E_eval/`` plus the three
10-column protocols, eval coded copies with CODEC/CODEC_Q/CODEC_SEED, and enrolment files outside the protocols.

Every clip, bona fide or spoof, goes through one channel chain (see ``channel``) so that bandwidth, loudness,
leading silence or noise floor give nothing away. The same seed gives the same protocols and identical FLAC bytes.
"""

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import butter, resample_poly, sosfiltfilt
from tqdm import tqdm

from training.corpus.attacks import ATTACK_BY_LABEL, ATTACKS, check_tools, read_wav, run_tool, synthesize, to_8k
from training.corpus.neural_tts import (
    copy_voice_card,
    draw_settings,
    licence_section,
    read_samples,
    readme_section,
    synthesize_batch,
)
from training.corpus.sources import (
    SOUNDS_ROOT,
    SPLITS,
    MissingPackageError,
    Prompt,
    Recording,
    home_voice,
    load_prompts,
    load_recordings,
    require_tool,
    speaker_number,
    voice_gender,
    write_readme,
)


PREFIX = {"train": "T", "dev": "D", "eval": "E"}
FLAC_DIR = {"train": "flac_T", "dev": "flac_D", "eval": "flac_E_eval"}
PROTOCOL = {"train": "ASVspoof5.train.tsv", "dev": "ASVspoof5.dev.track_1.tsv", "eval": "ASVspoof5.eval.track_1.tsv"}
TARGET_DBFS, DITHER_DBFS, PEAK = -26.0, -72.0, 0.95
# ASVspoof 5 codec ids (C01 opus_wb, C05 mp3_wb, C08 opus_nb, C10 speex_nb); CODEC_Q 1-3 -> bitrate.
CODECS = {
    "C01": ("opus_wb", "libopus", 16000, "ogg", ("8k", "16k", "24k")),
    "C05": ("mp3_wb", "libmp3lame", 16000, "mp3", ("16k", "24k", "32k")),
    "C08": ("opus_nb", "libopus", 8000, "ogg", ("6k", "8k", "12k")),
    "C10": ("speex_nb", "libspeex", 8000, "ogg", ("8k", "11k", "15k")),
}


@dataclass(frozen=True)
class Clip:
    """One protocol row plus what is needed to render it."""

    split: str
    speaker: str
    gender: str
    attack: str  # "bonafide" or an attack label
    seed: int
    source: str = ""  # bona fide / copy-synthesis recording
    key: str = ""  # prompt key (transcript key or recording key)
    text: str = ""
    lang: str = ""
    variant: str = ""
    name: str = ""
    codec: str = "-"
    codec_q: str = "-"
    codec_seed: str = "-"
    settings: tuple[tuple[str, float], ...] = ()  # per-clip synthesis settings drawn by the plan (Piper)
    enrolment: bool = False  # written to flac_D / flac_E_eval but left out of the protocol, like the real release

    def protocol_line(self) -> str:
        attack = ATTACK_BY_LABEL.get(self.attack)
        tag, label, key = (attack.attack_tag, self.attack, "spoof") if attack else ("-", "bonafide", "bonafide")
        fields = [
            self.speaker,
            self.name,
            self.gender,
            self.codec,
            self.codec_q,
            self.codec_seed,
            tag,
            label,
            key,
            "-",
        ]
        return " ".join(fields)


@dataclass
class Group:
    """An uncoded clip and its coded eval copies, rendered together because the copies code its audio."""

    clip: Clip
    coded: list[Clip] = field(default_factory=list)
    synthesized: tuple[str, int] | None = None  # (raw float32 file, rate) of a clip synthesised before rendering


# ---------------------------------------------------------------- the channel every clip goes through
def trim_silence(x: np.ndarray, rate: int, below_db: float = 35.0, pad_s: float = 0.05) -> np.ndarray:
    """Cut leading/trailing frames more than ``below_db`` under the loudest 20 ms frame (TTS starts abruptly)."""
    frame = rate // 50
    frames = x[: x.size // frame * frame].reshape(-1, frame)
    energy_db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    loud = np.flatnonzero(energy_db > energy_db.max() - below_db)
    pad = int(pad_s * rate)
    return x[max(0, loud[0] * frame - pad) : min(x.size, (loud[-1] + 1) * frame + pad)]


def coloured_noise(size: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(size))
    freqs = np.maximum(np.fft.rfftfreq(size), 1.0 / size)
    spectrum *= {"white": 1.0, "pink": freqs**-0.5, "brown": freqs**-1.0}[colour]
    noise = np.fft.irfft(spectrum, n=size)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def level(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RMS to -26 dBFS (peak-capped), then -72 dBFS dither, so loudness and digital silence say nothing."""
    rms = np.sqrt(np.mean(wave**2)) + 1e-12
    gain = min(10 ** (TARGET_DBFS / 20) / rms, PEAK / (np.abs(wave).max() + 1e-12))
    return wave * gain + rng.standard_normal(wave.size) * 10 ** (DITHER_DBFS / 20)


def channel(wave: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    """8 kHz -> trim -> coloured noise at U(15, 40) dB SNR -> 300-3400 Hz band-pass -> 16 kHz -> level."""
    x = trim_silence(to_8k(wave, rate), 8000)
    if x.size < 4000:
        raise RuntimeError(f"clip is shorter than 0.5 s after trimming ({x.size / 8000:.2f} s)")
    snr_db = rng.uniform(15.0, 40.0)
    noise = coloured_noise(x.size, str(rng.choice(["white", "pink", "brown"])), rng)
    x = x + noise * np.sqrt(np.mean(x**2)) * 10 ** (-snr_db / 20)
    x = sosfiltfilt(butter(4, [300, 3400], btype="bandpass", fs=8000, output="sos"), x)
    return level(resample_poly(x, 2, 1), rng)


def apply_codec(wave: np.ndarray, codec: str, quality: int) -> np.ndarray:
    """Encode and decode a 16 kHz clip with ffmpeg; back at 16 kHz."""
    ffmpeg = require_tool("ffmpeg", "ffmpeg", "the eval codec conditions")
    _, encoder, rate, extension, bitrates = CODECS[codec]
    quiet = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    raw = ["-f", "s16le", "-ac", "1"]
    with tempfile.TemporaryDirectory() as tmp:
        source, coded, decoded = Path(tmp) / "in.raw", Path(tmp) / f"coded.{extension}", Path(tmp) / "out.raw"
        source.write_bytes((np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes())
        encode = [*raw, "-ar", "16000", "-i", str(source), "-ar", str(rate), "-c:a", encoder]
        run_tool([*quiet, *encode, "-b:a", bitrates[quality - 1], str(coded)], f"ffmpeg {encoder}")
        run_tool([*quiet, "-i", str(coded), *raw, "-ar", "16000", str(decoded)], f"ffmpeg decode {codec}")
        return np.frombuffer(decoded.read_bytes(), "<i2") / 32768.0


def write_flac(path: Path, wave: np.ndarray) -> float:
    sf.write(str(path), np.clip(wave, -1, 32767 / 32768), 16000, subtype="PCM_16", format="FLAC")
    return wave.size / 16000


def render(group: Group, out_dir: Path) -> list[tuple[str, float]]:
    """Generate, pass through the channel, write FLAC; the clip's own seed makes this order-independent."""
    clip = group.clip
    rng = np.random.default_rng(clip.seed)
    try:
        if clip.attack == "bonafide":
            wave, rate = read_wav(Path(clip.source), "bona fide source")
        elif group.synthesized:
            wave, rate = read_samples(Path(group.synthesized[0])), group.synthesized[1]
        else:
            attack = ATTACK_BY_LABEL[clip.attack]
            wave, rate = synthesize(attack, clip.variant, rng, clip.text, clip.lang, clip.source)
        audio = channel(wave, rate, rng)
    except RuntimeError as error:
        raise RuntimeError(
            f"{clip.name} ({clip.attack} {clip.variant} {clip.key!r} {clip.source}): {error}"
        ) from error
    folder = out_dir / FLAC_DIR[clip.split]
    written = [(clip.name, write_flac(folder / f"{clip.name}.flac", audio))]
    for copy in group.coded:
        coded = level(apply_codec(audio, copy.codec, int(copy.codec_q)), np.random.default_rng(copy.seed))
        written.append((copy.name, write_flac(folder / f"{copy.name}.flac", coded)))
    return written


# ---------------------------------------------------------------- which clips exist
class SourceCursor:
    """Hands out a split's recordings in a fixed random order; wraps around (and counts reuse) when they run out."""

    def __init__(self, pool: list[Recording]):
        self.pool, self.taken = pool, 0

    def take(self, count: int) -> list[Recording]:
        chosen = [self.pool[(self.taken + i) % len(self.pool)] for i in range(count)]
        self.taken += count
        return chosen

    @property
    def reused(self) -> int:
        return max(0, self.taken - len(self.pool))


def plan_split(split: str, sizes: dict, recordings: list[Recording], prompts: list[Prompt], rng) -> tuple[list, dict]:
    """The uncoded clips of one split (bona fide, attacks, enrolment extras) and how many sources were reused."""
    prefix = PREFIX[split]
    pool = SourceCursor([recordings[i] for i in rng.permutation(len(recordings)) if recordings[i].split == split])
    texts = [prompts[i] for i in rng.permutation(len(prompts)) if prompts[i].split == split]

    def clip(voice: str, attack: str, **fields) -> Clip:
        return Clip(split, f"{prefix}_{speaker_number(voice):04d}", voice_gender(voice), attack, 0, **fields)

    def recorded(r: Recording, attack: str, **fields) -> Clip:
        """A clip made from a real recording (bona fide or copy-synthesis): its speaker, key and language."""
        return clip(r.recording_set.voice, attack, source=r.path, key=r.key, lang=r.recording_set.lang, **fields)

    clips = [recorded(r, "bonafide") for r in pool.take(sizes["bonafide"])]
    enrolment = [
        recorded(r, "bonafide", enrolment=True) for r in pool.take(sizes["enrolment"] if split != "train" else 0)
    ]
    reused_texts = 0
    for attack in (a for a in ATTACKS if a.split == split):
        if attack.kind == "copy":
            clips += [
                recorded(r, attack.label, variant=str(rng.choice(attack.variants)))
                for r in pool.take(sizes["per_attack"])
            ]
            continue
        usable = [p for p in texts if p.lang == "en" or not attack.english_only]
        reused_texts += max(0, sizes["per_attack"] - len(usable))  # the same text again, in another voice
        for i in range(sizes["per_attack"]):
            p, variant = usable[i % len(usable)], str(rng.choice(attack.variants))
            settings = draw_settings(rng) if attack.tool == "piper" else ()
            # The spoof targets the speaker who recorded prompts in that language (it claims to be them).
            fields = {"key": p.key, "text": p.text, "lang": p.lang, "variant": variant, "settings": settings}
            clips.append(clip(home_voice(p.lang), attack.label, **fields))
    return clips + enrolment, {"recordings": pool.reused, "texts": reused_texts}


def plan(sizes: dict, coded_fraction: float, seed: int) -> tuple[list[Group], dict[str, dict]]:
    """Draw every clip of the corpus from the seed: sources, texts, voices, speakers, codecs and file names.

    Bona fide, enrolment and copy-synthesis sources of a split are disjoint as long as its pool lasts; then the
    vocoders reuse recordings (the count is returned and written to the README). TTS text comes from the split's
    own prompt keys, so no sentence crosses splits.
    """
    rng = np.random.default_rng(seed)
    recordings, prompts = load_recordings(), load_prompts()
    groups, reused = [], {}
    for split in SPLITS:
        prefix = PREFIX[split]
        clips, reused[split] = plan_split(split, sizes, recordings, prompts, rng)
        split_groups = [Group(c) for c in clips if not c.enrolment]
        if split == "eval":
            for group in split_groups:
                if rng.random() < coded_fraction:
                    codec, quality = str(rng.choice(sorted(CODECS))), str(int(rng.integers(1, 4)))
                    group.coded.append(replace(group.clip, codec=codec, codec_q=quality))
        # File numbers follow a random order, so neither the name nor the protocol order reveals the class.
        entries = [(g, None) for g in split_groups] + [(g, i) for g in split_groups for i in range(len(g.coded))]
        for number, index in enumerate(rng.permutation(len(entries))):
            group, copy = entries[index]
            named = {"name": f"{prefix}_{number:010d}", "seed": int(rng.integers(2**62))}
            if copy is None:
                group.clip = replace(group.clip, codec_q="0" if split == "eval" else "-", **named)
            else:
                group.coded[copy] = replace(group.coded[copy], **named)
        for group in split_groups:
            group.coded = [replace(c, codec_seed=group.clip.name) for c in group.coded]
        enrolment = [c for c in clips if c.enrolment]
        for number, c in enumerate(enrolment, start=1):
            split_groups.append(Group(replace(c, name=f"{prefix}_A{number:010d}", seed=int(rng.integers(2**62)))))
        groups.extend(split_groups)
    return groups, reused


def synthesize_neural(groups: list[Group], work_dir: Path, seed: int) -> int:
    """Synthesise every Piper clip in one process, in plan order (see neural_tts); returns how many there were."""
    piper = [g for g in groups if getattr(ATTACK_BY_LABEL.get(g.clip.attack), "tool", "") == "piper"]
    if piper:
        files = synthesize_batch([(g.clip.text, g.clip.settings) for g in piper], work_dir, seed)
        for group, (path, rate) in zip(piper, files, strict=True):
            group.synthesized = (str(path), rate)
    return len(piper)


def write_protocols(groups: list[Group], out_dir: Path) -> dict[str, list[Clip]]:
    rows: dict[str, list[Clip]] = {split: [] for split in SPLITS}
    for group in groups:
        if not group.clip.enrolment:
            rows[group.clip.split].extend([group.clip, *group.coded])
    for split, clips in rows.items():
        clips.sort(key=lambda clip: clip.name)
        lines = "".join(clip.protocol_line() + "\n" for clip in clips)
        (out_dir / PROTOCOL[split]).write_text(lines, encoding="utf-8")
    return rows


def write_metadata(groups: list[Group], out_dir: Path) -> None:
    """Provenance of every file (not part of the ASVspoof format) plus an ASVspoof5.codec.config.csv look-alike."""
    columns = ["file", "split", "attack", "variant", "lang", "prompt_key", "source", "text", "codec", "codec_q"]
    lines = ["\t".join([*columns, "enrolment", "family", "system", "settings"])]
    for clip in sorted((c for g in groups for c in (g.clip, *g.coded)), key=lambda c: c.name):
        source = str(Path(clip.source).relative_to(SOUNDS_ROOT)) if clip.source else "-"
        attack = ATTACK_BY_LABEL.get(clip.attack)
        settings = " ".join(f"{name}={value}" for name, value in clip.settings) or "-"
        fields = [
            clip.name,
            clip.split,
            clip.attack,
            clip.variant or "-",
            clip.lang or "-",
            clip.key,
            source,
            clip.text or "-",
            clip.codec,
            clip.codec_q,
            str(clip.enrolment).lower(),
            attack.family if attack else "bonafide",
            attack.method if attack else "-",
            settings,
        ]
        lines.append("\t".join(fields))
    (out_dir / "mini_corpus.metadata.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = ["ID,CODEC,CODEC_Q,Bitrate(kbps)"]
    for cid, (name, _, _, _, bitrates) in CODECS.items():
        rows += [f"C{int(cid[1:])},{name},{q},{rate.rstrip('k')}" for q, rate in enumerate(bitrates, start=1)]
    (out_dir / "ASVspoof5.codec.config.csv").write_bytes(("\r\n".join(rows) + "\r\n").encode())


def build_corpus(
    out_dir: str | Path,
    per_attack: int = 100,
    bonafide_per_split: int = 200,
    seed: int = 0,
    workers: int = 2,
    enrolment: int = 2,
    coded_fraction: float = 0.5,
    progress: bool = True,
) -> dict:
    """Build the corpus into an empty (or new) ``out_dir``; returns a summary (clips per split, MB, seconds)."""
    out_dir = Path(out_dir)
    if per_attack < 1 or bonafide_per_split < 1:
        raise ValueError(f"--per-attack ({per_attack}) and --bonafide-per-split ({bonafide_per_split}) must be >= 1")
    if not 0.0 <= coded_fraction <= 1.0 or enrolment < 0 or workers < 1:
        raise ValueError(
            f"need 0 <= --coded-fraction <= 1 ({coded_fraction}), --enrolment >= 0 ({enrolment}), "
            f"--workers >= 1 ({workers})"
        )
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; give a new directory (the builder never overwrites)")
    start = time.perf_counter()
    check_tools()
    require_tool("ffmpeg", "ffmpeg", "the eval codec conditions")
    sizes = {"per_attack": per_attack, "bonafide": bonafide_per_split, "enrolment": enrolment}
    groups, reused = plan(sizes, coded_fraction, seed)
    for split in SPLITS:
        (out_dir / FLAC_DIR[split]).mkdir(parents=True, exist_ok=True)
    durations: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="molex-piper-") as work_dir:
        neural_start = time.perf_counter()
        neural_clips = synthesize_neural(groups, Path(work_dir), seed)
        neural_seconds = time.perf_counter() - neural_start
        bar = tqdm(total=sum(1 + len(g.coded) for g in groups), desc="mini corpus", unit="clip", disable=not progress)
        if workers <= 1:
            for written in (render(group, out_dir) for group in groups):
                durations.update(written)
                bar.update(len(written))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for written in pool.map(render, groups, [out_dir] * len(groups), chunksize=4):
                    durations.update(written)
                    bar.update(len(written))
        bar.close()
    rows = write_protocols(groups, out_dir)
    summary = {
        "seed": seed,
        "per_attack": per_attack,
        "bonafide_per_split": bonafide_per_split,
        "clips": {split: len(clips) for split, clips in rows.items()},
        "bonafide_rows": {split: sum(c.attack == "bonafide" for c in clips) for split, clips in rows.items()},
        "enrolment": {split: sum(g.clip.enrolment for g in groups if g.clip.split == split) for split in SPLITS},
        "reused": reused,
        "hours": round(sum(durations.values()) / 3600, 3),
        "megabytes": round(sum(p.stat().st_size for p in out_dir.rglob("*.flac")) / 1e6, 1),
        "build_seconds": round(time.perf_counter() - start, 1),
        "piper": {"clips": neural_clips, "synthesis_seconds": round(neural_seconds, 1)},
    }
    write_metadata(groups, out_dir)
    write_readme(out_dir, summary, ATTACKS, CODECS, readme_section(), licence_section())
    copy_voice_card(out_dir / "LICENSES")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="new or empty output directory")
    parser.add_argument("--per-attack", type=int, default=100, help="clips per attack label (default 100)")
    parser.add_argument("--bonafide-per-split", type=int, default=200, help="bona fide clips per split (default 200)")
    parser.add_argument("--enrolment", type=int, default=2, help="extra dev/eval files outside the protocol")
    parser.add_argument("--coded-fraction", type=float, default=0.5, help="share of eval clips that get a coded copy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    try:
        summary = build_corpus(
            args.out_dir,
            args.per_attack,
            args.bonafide_per_split,
            args.seed,
            args.workers,
            args.enrolment,
            args.coded_fraction,
        )
    except (MissingPackageError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out_dir}: {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
