"""The spoofing attacks of the mini corpus: one generation method each, ASVspoof-5-style labels, disjoint per split.

Like ASVspoof 5, train, dev and eval hold different attack labels. Like ASVspoof 2019 (where eval A16/A19 are the
training systems A04/A06), some eval labels reuse a training *method* with other voices or settings: those are the
"known" eval attacks; the rest are "unseen" (never in training). ``ATTACKS`` is the documented label -> method table.

Each generator returns ``(wave float64 in [-1, 1], sampling_rate)``; text-to-speech ones get a text and a language,
copy-synthesis ones get a real recording. All randomness comes from the ``rng`` they are given.
"""

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import istft, resample_poly, stft
from transformers.audio_utils import mel_filter_bank

from training.corpus.neural_tts import PIPER_PINS, require_piper
from training.corpus.sources import missing_package, require_tool, run_tool


@dataclass(frozen=True)
class Attack:
    label: str
    split: str
    family: str  # "TTS" (speaks a transcript) or "vocoder" (copy-synthesis of a real recording)
    variants: tuple[str, ...]  # voices / settings, one drawn per clip
    tool: str  # executable that must exist ("" = numpy/scipy only; "piper" = the PyPI engine, run as a process)
    package: str  # Debian package that ships it ("" = none)
    method: str
    known_as: str | None = None  # eval only: the training label that uses the same method ("known" attack)
    pypi: tuple[str, ...] = ()  # pinned PyPI requirements of a tool that Debian does not ship

    @property
    def kind(self) -> str:
        return "tts" if self.family == "TTS" else "copy"

    @property
    def english_only(self) -> bool:
        """flite, festival and the Piper voice are English only; espeak-ng speaks every prompt language."""
        return self.tool in ("flite", "text2wave", "piper")

    @property
    def attack_tag(self) -> str:
        """ATTACK_TAG column. Our convention: AC1 = stock TTS voice, no target data; AC2 = uses the target's speech."""
        return "AC1" if self.kind == "tts" else "AC2"


ESPEAK_LANGS = {"en": "en-us", "es": "es-419", "fr": "fr-fr", "it": "it", "ru": "ru"}

# fmt: off
ATTACKS = (
    Attack("A01", "train", "TTS", ("m1", "m3", "f1", "f2", "m5"), "espeak-ng", "espeak-ng", "espeak-ng formant"),
    Attack("A02", "train", "TTS", ("slt", "rms"), "flite", "flite", "flite clustergen (statistical parametric)"),
    Attack("A03", "train", "vocoder", ("32",), "", "", "Griffin-Lim (32 iterations) from a 40-band mel spectrogram"),
    Attack("A04", "train", "vocoder", ("lpc10",), "sox", "sox", "LPC-10 2.4 kbit/s (sox)"),
    Attack("A05", "dev", "TTS", ("kal", "ked"), "text2wave", "festival", "festival diphone (residual-excited LPC)"),
    Attack("A06", "dev", "vocoder", ("1300",), "c2enc", "codec2", "codec2 1300 bit/s"),
    Attack("A07", "eval", "TTS", ("m2", "m4", "f3", "f4"), "espeak-ng", "espeak-ng", "espeak-ng formant, other voices",
           known_as="A01"),
    Attack("A08", "eval", "TTS", ("awb",), "flite", "flite", "flite clustergen, awb voice", known_as="A02"),
    Attack("A09", "eval", "vocoder", ("lpc10",), "sox", "sox", "LPC-10 2.4 kbit/s (sox)", known_as="A04"),
    Attack("A10", "eval", "TTS", ("slt_hts",), "text2wave", "festvox-us-slt-hts", "festival HTS slt (HMM synthesis)"),
    Attack("A11", "eval", "vocoder", ("mlsa",), "mlsadf", "sptk", "SPTK mel-cepstrum + pitch, MLSA filter"),
    Attack("A12", "eval", "vocoder", ("700C",), "c2enc", "codec2", "codec2 700C bit/s"),
    # Neural TTS, appended so that A01-A12 keep their meaning: A14 is to A13 what A09 is to A04 (same method and
    # voice, held-out prompts). See training/corpus/neural_tts.py for how it runs and what is (not) deterministic.
    Attack("A13", "train", "TTS", ("joe",), "piper", "", "Piper VITS neural TTS, en_US-joe-medium", pypi=PIPER_PINS),
    Attack("A14", "eval", "TTS", ("joe",), "piper", "", "Piper VITS neural TTS, en_US-joe-medium", known_as="A13",
           pypi=PIPER_PINS),
)
# fmt: on
ATTACK_BY_LABEL = {attack.label: attack for attack in ATTACKS}
FESTIVAL_VOICES = {
    "kal": ("voice_kal_diphone", "festvox-kallpc16k"),
    "ked": ("voice_ked_diphone", "festvox-kdlpc16k"),
    "slt_hts": ("voice_cmu_us_slt_arctic_hts", "festvox-us-slt-hts"),
}
FESTIVAL_VOICE_DIRS = {
    "kal": "/usr/share/festival/voices/english/kal_diphone",
    "ked": "/usr/share/festival/voices/english/ked_diphone",
    "slt_hts": "/usr/share/festival/voices/us/cmu_us_slt_arctic_hts",
}


def read_wav(path: Path, what: str) -> tuple[np.ndarray, int]:
    wave, rate = sf.read(str(path), dtype="float64", always_2d=True)
    if wave.shape[0] == 0 or not np.any(wave):
        raise RuntimeError(f"{what} produced no audio ({path})")
    return wave.mean(axis=1), rate


def espeak(text: str, lang: str, variant: str, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Rule-based formant synthesis with a random speaking rate and pitch, so prosody is not constant."""
    tool = require_tool("espeak-ng", "espeak-ng", "the espeak-ng attacks")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        rate, pitch = int(rng.integers(140, 191)), int(rng.integers(30, 71))
        command = [tool, "-v", f"{ESPEAK_LANGS[lang]}+{variant}", "-s", str(rate), "-p", str(pitch), "-w", str(out)]
        run_tool([*command, text], "espeak-ng")
        return read_wav(out, "espeak-ng")


def flite(text: str, voice: str) -> tuple[np.ndarray, int]:
    tool = require_tool("flite", "flite", "the flite attacks")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        run_tool([tool, "-voice", voice, "-t", text, "-o", str(out)], f"flite ({voice})")
        return read_wav(out, f"flite ({voice})")


def festival(text: str, voice: str) -> tuple[np.ndarray, int]:
    tool = require_tool("text2wave", "festival", "the festival attacks")
    function, package = FESTIVAL_VOICES[voice]
    if not Path(FESTIVAL_VOICE_DIRS[voice]).exists():
        raise missing_package(package, f"the festival voice {voice}")
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "text.txt", Path(tmp) / "out.wav"
        source.write_text(text + "\n", encoding="utf-8")
        run_tool([tool, "-eval", f"({function})", str(source), "-o", str(out)], f"festival ({voice})")
        return read_wav(out, f"festival ({voice})")


def to_8k(wave: np.ndarray, rate: int) -> np.ndarray:
    if rate == 8000:
        return wave
    gcd = np.gcd(rate, 8000)
    return resample_poly(wave, 8000 // gcd, rate // gcd)


def to_int16_bytes(wave: np.ndarray) -> bytes:
    return (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


def lpc10(wave: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
    """Encode and decode with sox's built-in LPC-10 (2.4 kbit/s, pulse/noise excitation)."""
    tool = require_tool("sox", "sox", "the LPC-10 attacks")
    raw = ["-t", "raw", "-e", "signed", "-b", "16", "-c", "1", "-r", "8000"]
    coded = run_tool([tool, *raw, "-", "-t", "lpc10", "-"], "sox lpc10 encode", to_int16_bytes(to_8k(wave, rate)))
    decoded = run_tool([tool, "-t", "lpc10", "-", *raw, "-"], "sox lpc10 decode", coded)
    return np.frombuffer(decoded, "<i2") / 32768.0, 8000


def codec2(wave: np.ndarray, rate: int, mode: str) -> tuple[np.ndarray, int]:
    """Encode and decode with the Codec2 sinusoidal low-bit-rate speech codec."""
    encoder = require_tool("c2enc", "codec2", "the codec2 attacks")
    decoder = require_tool("c2dec", "codec2", "the codec2 attacks")
    with tempfile.TemporaryDirectory() as tmp:
        raw, bits, out = (Path(tmp) / name for name in ("in.raw", "out.bit", "out.raw"))
        raw.write_bytes(to_int16_bytes(to_8k(wave, rate)))
        run_tool([encoder, mode, str(raw), str(bits)], f"c2enc {mode}")
        run_tool([decoder, mode, str(bits), str(out)], f"c2dec {mode}")
        return np.frombuffer(out.read_bytes(), "<i2") / 32768.0, 8000


def mlsa(wave: np.ndarray, rate: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """SPTK copy-synthesis: mel-cepstrum + RAPT pitch -> pulse/noise excitation -> MLSA filter.

    Runs at 8 kHz (the MLSA filter is unstable at 16 kHz on 8 kHz-band speech) with +-2 LSB dither, which keeps
    the mel-cepstral analysis of digital silence finite.
    """
    tools = {
        name: require_tool(name, "sptk", "the SPTK MLSA attack")
        for name in ("frame", "window", "mcep", "pitch", "excite", "mlsadf")
    }
    x = to_8k(wave, rate) * 32768.0 + rng.uniform(-2.0, 2.0, size=to_8k(wave, rate).shape)
    with tempfile.TemporaryDirectory() as tmp:
        source, mcep, pitch = (Path(tmp) / name for name in ("x.f32", "x.mcep", "x.pitch"))
        x.astype("<f4").tofile(source)
        framed = run_tool([tools["frame"], "-l", "256", "-p", "40", str(source)], "sptk frame")
        windowed = run_tool([tools["window"], "-l", "256", "-L", "256"], "sptk window", framed)
        mcep.write_bytes(
            run_tool([tools["mcep"], "-l", "256", "-m", "20", "-a", "0.31", "-e", "1e-8"], "sptk mcep", windowed)
        )
        pitch.write_bytes(
            run_tool(
                [tools["pitch"], "-a", "1", "-s", "8", "-p", "40", "-L", "60", "-H", "400", str(source)], "sptk pitch"
            )
        )
        seed = str(int(rng.integers(1, 2**31 - 1)))
        excitation = run_tool([tools["excite"], "-p", "40", "-s", seed, str(pitch)], "sptk excite")
        out = run_tool([tools["mlsadf"], "-m", "20", "-a", "0.31", "-p", "40", str(mcep)], "sptk mlsadf", excitation)
    y = np.frombuffer(out, "<f4").astype(np.float64) / 32768.0
    if not np.all(np.isfinite(y)):
        raise RuntimeError("SPTK MLSA synthesis diverged (non-finite samples)")
    return y, 8000


def mel_filterbank(rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular HTK-style mel filters, ``(n_mels, n_fft // 2 + 1)`` (transformers' bank, no normalisation)."""
    return mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=rate / 2,
        sampling_rate=rate,
        norm=None,
        mel_scale="htk",
    ).T


def griffin_lim(wave: np.ndarray, rate: int, iterations: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Mel-spectrogram inversion: pseudo-inverse of the mel filters, then Griffin-Lim phase reconstruction."""
    x = to_8k(wave, rate)
    n_fft, hop = 256, 64
    spec_args = {"fs": 8000, "window": "hann", "nperseg": n_fft, "noverlap": n_fft - hop}
    magnitude = np.abs(stft(x, **spec_args)[2])
    mel = mel_filterbank(8000, n_fft, 40)
    target = np.maximum(np.linalg.pinv(mel) @ (mel @ magnitude), 0.0)
    phase = np.exp(2j * np.pi * rng.random(target.shape))
    for _ in range(iterations):
        y = istft(target * phase, **spec_args)[1]
        phase = np.exp(1j * np.angle(stft(y, **spec_args)[2][:, : target.shape[1]]))
    return istft(target * phase, **spec_args)[1][: x.size], 8000


def synthesize(
    attack: Attack, variant: str, rng: np.random.Generator, text: str = "", lang: str = "", source: str = ""
) -> tuple[np.ndarray, int]:
    """Run ``attack`` with one of its variants on a transcript (TTS) or a recording path (copy-synthesis)."""
    if attack.kind == "tts":
        if attack.tool == "piper":
            raise ValueError(
                f"attack {attack.label} (Piper) is synthesised in one batch process before rendering "
                "(training.corpus.neural_tts.synthesize_batch), not clip by clip"
            )
        if attack.tool == "espeak-ng":
            return espeak(text, lang, variant, rng)
        return flite(text, variant) if attack.tool == "flite" else festival(text, variant)
    wave, rate = read_wav(Path(source), "bona fide source")
    vocoders: dict[str, Callable[[], tuple[np.ndarray, int]]] = {
        "lpc10": lambda: lpc10(wave, rate),
        "1300": lambda: codec2(wave, rate, "1300"),
        "700C": lambda: codec2(wave, rate, "700C"),
        "mlsa": lambda: mlsa(wave, rate, rng),
        "32": lambda: griffin_lim(wave, rate, 32, rng),
    }
    return vocoders[variant]()


def check_tools(attacks: tuple[Attack, ...] = ATTACKS) -> None:
    """Fail before generating anything if a tool or voice of the chosen attacks is missing."""
    for attack in attacks:
        if attack.pypi:
            require_piper(f"attack {attack.label} ({attack.method})")
        elif attack.tool:
            require_tool(attack.tool, attack.package, f"attack {attack.label} ({attack.method})")
        if attack.tool == "text2wave":
            for voice in attack.variants:
                if not Path(FESTIVAL_VOICE_DIRS[voice]).exists():
                    raise missing_package(FESTIVAL_VOICES[voice][1], f"attack {attack.label}, festival voice {voice}")
