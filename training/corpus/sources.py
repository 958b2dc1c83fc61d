"""Where the mini corpus gets its material: real speech and text shipped in Debian packages, and the tools it runs.

Bona fide speech is the Asterisk IVR prompt sets (studio read speech, 8 kHz, CC-BY-SA / CC-BY). Their transcripts
give the text the TTS attacks speak. Every prompt key (e.g. ``digits/1``) is assigned to one split by a hash of the
key alone, so no sentence occurs in two splits, in any language, whatever the seed.

Nothing here downloads anything: a missing package is reported with the ``apt-get`` line that installs it.
"""

import gzip
import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf


SOUNDS_ROOT = Path("/usr/share/asterisk/sounds")
DOC_ROOT = Path("/usr/share/doc")
SPTK_BIN = Path("/usr/libexec/sptk/bin")  # SPTK installs its tools off PATH
APT_LIST = "scripts/apt-packages-corpus.txt"
SPLITS = ("train", "dev", "eval")
# Share of prompt keys per split, like the notes' recipe (50 / 20 / 30 %).
SPLIT_BOUNDS = (0.5, 0.7)
# Usable bona fide clip length: shorter prompts are single words, longer ones are menus with long pauses.
MIN_SECONDS, MAX_SECONDS = 1.0, 10.0


class MissingPackageError(RuntimeError):
    """A package the corpus needs (Debian, or PyPI for the neural TTS) is not installed."""


@dataclass(frozen=True)
class RecordingSet:
    """One Asterisk prompt set: a directory of 8 kHz WAVs read by one speaker."""

    directory: str
    package: str
    lang: str
    voice: str  # the real person; en and es are both Allison Smith
    gender: str
    licence: str
    credit: str
    transcript_lang: str  # whose transcript lists the keys (Menardi ships none; it reuses the Italian one)


RECORDING_SETS = (
    RecordingSet(
        "en_US_f_Allison",
        "asterisk-core-sounds-en-wav",
        "en",
        "allison",
        "F",
        "CC-BY-SA-3.0",
        "Allison Smith (2003-2010)",
        "en",
    ),
    RecordingSet(
        "es_MX_f_Allison",
        "asterisk-core-sounds-es-wav",
        "es",
        "allison",
        "F",
        "CC-BY-SA-3.0",
        "Allison Smith (2003-2010)",
        "es",
    ),
    RecordingSet(
        "fr_CA_f_June",
        "asterisk-core-sounds-fr-wav",
        "fr",
        "june",
        "F",
        "CC-BY-SA-3.0",
        "June Wallack (2006-2008)",
        "fr",
    ),
    RecordingSet(
        "it_IT_m_Carlo",
        "asterisk-core-sounds-it-wav",
        "it",
        "carlo",
        "M",
        "CC-BY-3.0",
        "Carlo Flora (2012), http://www.segreterietelefoniche.it",
        "it",
    ),
    RecordingSet(
        "ru_RU_f_IvrvoiceRU",
        "asterisk-core-sounds-ru-wav",
        "ru",
        "ivrvoice",
        "F",
        "CC-BY-3.0",
        "Maxim / ivrvoice.ru (2010)",
        "ru",
    ),
    RecordingSet(
        "it_IT_f_Menardi",
        "asterisk-prompt-it-menardi-wav",
        "it",
        "menardi",
        "F",
        "CC-BY-SA-3.0 Italy (attribution clause: credit and URL must be visible)",
        "Marco Menardi and Paola Dal Zot (2006-2011), http://www.voip.ammdomus.it",
        "it",
    ),
)
VOICES = ("allison", "june", "carlo", "ivrvoice", "menardi")  # speaker number = position + 1
TRANSCRIPT_PACKAGES = {lang: f"asterisk-core-sounds-{lang}" for lang in ("en", "es", "fr", "it", "ru")}


@dataclass(frozen=True)
class Recording:
    """One usable bona fide prompt recording."""

    path: str
    key: str
    split: str
    recording_set: RecordingSet
    seconds: float


@dataclass(frozen=True)
class Prompt:
    """One transcript line that a TTS attack can speak."""

    key: str
    lang: str
    text: str
    split: str


def missing_package(package: str, why: str) -> MissingPackageError:
    return MissingPackageError(
        f"Debian package '{package}' is not installed (needed for {why}). Install it with:\n"
        f"  apt-get install -y {package}\n"
        f"or install everything the mini corpus needs: xargs -a {APT_LIST} apt-get install -y"
    )


def require_tool(name: str, package: str, why: str) -> str:
    """Path of an executable, or a MissingPackageError naming the Debian package that ships it."""
    path = shutil.which(name) or (str(SPTK_BIN / name) if (SPTK_BIN / name).exists() else None)
    if path is None:
        raise missing_package(package, why)
    return path


def run_tool(command: list[str], what: str, stdin: bytes | None = None) -> bytes:
    """Run a synthesis tool; a failure raises with the command and its stderr, never yields silence."""
    result = subprocess.run(command, input=stdin, capture_output=True, check=False)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip()[-500:]
        raise RuntimeError(f"{what} failed (exit {result.returncode}): {' '.join(command)}\n{message}")
    return result.stdout


def require_path(path: Path, package: str, why: str) -> Path:
    if not path.exists():
        raise missing_package(package, why)
    return path


def split_of_key(key: str) -> str:
    """Deterministic split of a prompt key (md5, independent of the seed and the language)."""
    fraction = int(hashlib.md5(key.encode()).hexdigest()[:8], 16) / 0x1_0000_0000
    if fraction < SPLIT_BOUNDS[0]:
        return "train"
    return "dev" if fraction < SPLIT_BOUNDS[1] else "eval"


def transcript_path(lang: str) -> Path:
    package = TRANSCRIPT_PACKAGES[lang]
    return require_path(DOC_ROOT / package / f"core-sounds-{lang}.txt.gz", package, f"the {lang} prompt transcripts")


def read_transcript(lang: str) -> dict[str, str]:
    """``key -> text`` from ``core-sounds-LANG.txt.gz`` (``key: text`` lines, ``;`` comments, tones as ``[...]``)."""
    path = transcript_path(lang)
    entries: dict[str, str] = {}
    with gzip.open(path, "rt", encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line or line.startswith(";"):
                continue
            key, sep, text = line.partition(":")
            if not sep:
                raise ValueError(f"{path}:{number}: expected 'key: text', got {line!r}")
            entries[key.strip()] = text.strip()
    return entries


def is_speech_text(text: str) -> bool:
    """False for tones/beeps (``[...]``) and empty entries, which have no speech to imitate."""
    return bool(text) and not text.startswith("[") and any(ch.isalpha() for ch in text)


def clean_tts_text(text: str) -> str:
    """Text the synthesisers can speak: festival's diphone voices segfault on a leading ellipsis."""
    text = text.replace("…", " ").replace("...", " ")
    text = " ".join(part for part in text.split() if not (part.startswith("[") and part.endswith("]")))
    return text.strip(" .,;:-")


def load_recordings() -> list[Recording]:
    """All usable bona fide recordings, in a fixed order (set, then key)."""
    transcripts = {lang: read_transcript(lang) for lang in TRANSCRIPT_PACKAGES}
    recordings = []
    for rec_set in RECORDING_SETS:
        directory = require_path(
            SOUNDS_ROOT / rec_set.directory, rec_set.package, f"bona fide speech ({rec_set.lang})"
        )
        texts = transcripts[rec_set.transcript_lang]
        for path in sorted(directory.rglob("*.wav")):
            key = path.relative_to(directory).with_suffix("").as_posix()
            if key.startswith("silence/") or not is_speech_text(texts.get(key, "")):
                continue
            info = sf.info(str(path))
            seconds = info.frames / info.samplerate
            if MIN_SECONDS <= seconds <= MAX_SECONDS:
                recordings.append(Recording(str(path), key, split_of_key(key), rec_set, seconds))
    return recordings


def load_prompts(max_chars: int = 160) -> list[Prompt]:
    """TTS text in all five languages, split by key like the recordings.

    At least 3 words and 15 characters, so synthetic clips are not shorter than the 1-10 s bona fide ones.
    """
    prompts = []
    for lang in TRANSCRIPT_PACKAGES:
        for key, text in sorted(read_transcript(lang).items()):
            text = clean_tts_text(text)
            if is_speech_text(text) and len(text.split()) >= 3 and 15 <= len(text) <= max_chars:
                prompts.append(Prompt(key, lang, text, split_of_key(key)))
    return prompts


def speaker_number(voice: str) -> int:
    return VOICES.index(voice) + 1


def voice_gender(voice: str) -> str:
    return next(rec_set.gender for rec_set in RECORDING_SETS if rec_set.voice == voice)


def home_voice(lang: str) -> str:
    """The voice whose recordings a TTS attack in ``lang`` targets (the speaker it pretends to be)."""
    return next(rec_set.voice for rec_set in RECORDING_SETS if rec_set.lang == lang)


# ---------------------------------------------------------------- README / licence files written into the corpus
TOOL_PACKAGES = (
    "espeak-ng",
    "flite",
    "festival",
    "festvox-kallpc16k",
    "festvox-kdlpc16k",
    "festvox-us-slt-hts",
    "sptk",
    "codec2",
    "sox",
    "ffmpeg",
)

LICENCE_TEXT = """\
Licence of this corpus: CC-BY-SA-3.0 (Creative Commons Attribution-ShareAlike 3.0).

Every bona fide clip is an edited copy (trimmed, noise added, band-passed, resampled, level-normalised, some
re-encoded) of an Asterisk IVR prompt recording, and every copy-synthesis spoof is a derived work of one. Part of
those recordings are CC-BY-SA-3.0, so the share-alike terms apply to the whole corpus. Attribution:

{credits}

REQUIRED VISIBLE CREDIT (condition of the Menardi recordings): the Italian female prompts (speaker
{menardi}) were made by Marco Menardi and Paola Dal Zot; updates and new voices: http://www.voip.ammdomus.it

Spoofed clips made by text-to-speech come from free software and freely licensed voices shipped by Debian
(espeak-ng, flite, festival with festvox-kallpc16k / festvox-kdlpc16k / festvox-us-slt-hts); vocoded clips were
made with sox, codec2, SPTK and numpy/scipy; codec copies with ffmpeg. The Debian copyright files of every package
used are copied into LICENSES/.
{extra}"""


def write_readme(
    out_dir: Path, summary: dict, attacks: tuple, codecs: dict, extra_readme: str = "", extra_licence: str = ""
) -> None:
    """README.txt (what is inside, how it was made), LICENSE.txt (attribution) and LICENSES/ (Debian copyright).

    ``extra_readme`` / ``extra_licence``: paragraphs of attacks that do not come from Debian (the neural TTS).
    """
    sets = "\n".join(
        f"  speaker {speaker_number(s.voice):04d} ({s.gender}, {s.lang}, {s.directory}, package {s.package}): "
        f"{s.credit}; licence {s.licence}"
        for s in RECORDING_SETS
    )
    attack_rows = "\n".join(
        f"  {a.label}  {a.split:<5}  {a.family:<7}  {a.attack_tag}  {a.method}; variants {', '.join(a.variants)}"
        + (
            f"; Debian package {a.package}"
            if a.package
            else f"; PyPI {' + '.join(a.pypi)}"
            if a.pypi
            else "; numpy/scipy"
        )
        + (f"; SAME METHOD as training attack {a.known_as} (eval 'known')" if a.known_as else "")
        + ("; eval 'unseen'" if a.split == "eval" and not a.known_as else "")
        for a in attacks
    )
    codec_rows = "\n".join(
        f"  {cid}  {name:<8}  ffmpeg {encoder}, {rate} Hz, CODEC_Q 1/2/3 = {' / '.join(rates)} bit/s"
        for cid, (name, encoder, rate, _, rates) in codecs.items()
    )
    counts = "\n".join(
        f"  {split:<5}: {summary['clips'][split]} protocol rows ({summary['bonafide_rows'][split]} bona fide), "
        f"{summary['enrolment'][split]} enrolment files outside the protocol; reused once the split's pool ran out: "
        f"{summary['reused'][split]['recordings']} vocoder source recordings, "
        f"{summary['reused'][split]['texts']} TTS texts"
        for split in SPLITS
    )
    readme = f"""\
MoLEx mini corpus: a small spoofing-detection corpus in the ASVspoof 5 layout, built offline from Debian packages
(and, for the neural TTS attacks, PyPI packages).
Made by `python -m training.corpus.make_mini_corpus` (seed {summary["seed"]}, --per-attack {summary["per_attack"]},
--bonafide-per-split {summary["bonafide_per_split"]}); same seed -> same protocols and identical FLAC bytes (for the
neural TTS clips: on the same machine and onnxruntime build, see below).
It is a test and smoke-benchmark corpus, NOT ASVspoof 5 data, and results on it are not comparable to ASVspoof.

Layout (as the ASVspoof 5 release): flac_T/, flac_D/, flac_E_eval/ with <T_|D_|E_><10 digits>.flac (16 kHz mono
16-bit FLAC); protocols ASVspoof5.train.tsv, ASVspoof5.dev.track_1.tsv, ASVspoof5.eval.track_1.tsv, single-space
separated, no header: SPEAKER_ID FLAC_FILE_NAME GENDER CODEC CODEC_Q CODEC_SEED ATTACK_TAG ATTACK_LABEL KEY TMP.
Enrolment files <D_|E_>A<10 digits>.flac sit in flac_D/ and flac_E_eval/ but in no protocol (as in the release).
Train and dev are uncoded (CODEC CODEC_Q CODEC_SEED = - - -). Eval originals are uncoded (- 0 -); coded eval copies
carry the codec, its quality index and, as CODEC_SEED, the file name of the uncoded original.
mini_corpus.metadata.tsv (tab separated, header) gives each file's source recording or text, language, voice
(variant), attack family and system, and the synthesis settings drawn for it (Piper clips; "-" otherwise).

Size: {summary["hours"]} h of audio, {summary["megabytes"]} MB of FLAC.
{counts}

Attacks (label, split, family, ATTACK_TAG, method). Train, dev and eval labels are disjoint as in ASVspoof 5; some
eval labels reuse a training method with other voices (like ASVspoof 2019 A16 = A04): "known" vs "unseen".
ATTACK_TAG is our convention: AC1 = stock TTS voice (no target speech used), AC2 = copy-synthesis of the target.
{attack_rows}

Eval codecs (ids follow ASVspoof 5; applied to the finished 16 kHz clip, decoded, level-normalised again):
{codec_rows}

Channel applied to EVERY clip, bona fide and spoof alike, so that bandwidth, level, silence or noise floor are no
shortcut: resample to 8 kHz; trim leading/trailing frames 35 dB below the loudest (50 ms kept); add white, pink or
brown noise at U(15, 40) dB SNR; 300-3400 Hz Butterworth band-pass (zero phase); resample to 16 kHz; RMS to
-26 dBFS (peak cap 0.95); -72 dBFS Gaussian dither; 16-bit FLAC.

Speakers (the number after T_/D_/E_ is the same real voice in every split; with only five voices, splits share
speakers, but prompt keys are split by an md5 of the key, 50/20/30 %, so no sentence is in two splits). A spoof's
SPEAKER_ID/GENDER is its target: the recorded speaker for copy-synthesis, the speaker who recorded the prompt
language for TTS (flite, festival and Piper speak English only; espeak-ng speaks all five languages).
{sets}
{extra_readme}
Sources and licences: see LICENSE.txt and LICENSES/.
"""
    (out_dir / "README.txt").write_text(readme, encoding="utf-8")
    credits = "\n".join(
        f"  - {s.directory}: {s.credit} ({s.licence}), Debian package {s.package}" for s in RECORDING_SETS
    )
    menardi = f"{speaker_number('menardi'):04d}"
    (out_dir / "LICENSE.txt").write_text(
        LICENCE_TEXT.format(credits=credits, menardi=menardi, extra=extra_licence), encoding="utf-8"
    )
    licences = out_dir / "LICENSES"
    licences.mkdir(exist_ok=True)
    for package in sorted(
        {s.package for s in RECORDING_SETS} | set(TRANSCRIPT_PACKAGES.values()) | set(TOOL_PACKAGES)
    ):
        copyright_file = DOC_ROOT / package / "copyright"
        if copyright_file.exists():
            shutil.copyfile(copyright_file, licences / f"{package}.copyright")
