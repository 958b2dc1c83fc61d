"""Convert the pip-installed CTranslate2 Whisper weights into a standard transformers Whisper folder, offline.

    python -m training.encoders.import_whisper {tiny.en,base} [--output DIR]

Why: MoLEx needs a real pretrained speech encoder, and Whisper tiny.en / base are the only ones that install
offline (`whisper_packages`). The folder written here (config.json, model.safetensors, generation_config.json,
preprocessor_config.json, tokenizer.json) loads with `WhisperForConditionalGeneration.from_pretrained` - encoder and
decoder - and so with `MoLExForAudioClassification.from_backbone(folder)`.

Nothing is ever half-written: the folder is built in a hidden sibling, loaded back with transformers (no missing,
unexpected or mismatched key, every tensor equal to the converted one), and only then renamed into place, with
`molex_import.json` (provenance and file sizes) as the mark of a complete conversion. `ensure_whisper_folder` (what
the main job calls) converts once into the cache folder and reuses a complete conversion afterwards.

Weights are written as float32: float16 -> float32 is exact, and transformers 5 loads a checkpoint in its stored
dtype by default, so a float16 folder would quietly run the CPU main job in float16.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

from training.encoders.ctranslate2_format import parse_ctranslate2_model
from training.encoders.whisper_configs import build_configs
from training.encoders.whisper_from_ctranslate2 import whisper_state_dict
from training.encoders.whisper_packages import WHISPER_WEIGHTS, WhisperWeights, locate, read_json, read_model_bin


CONVERTER_VERSION = 1  # bump when the output changes, so cached folders are redone
MARKER = "molex_import.json"
PARTIAL_PREFIX = ".partial-"
DEFAULT_CACHE = Path("outputs") / "encoders"  # relative to the working directory, like every other output default


def default_whisper_folder(name: str, cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`, else `$MOLEX_CACHE/encoders`, else `outputs/encoders`; the folder is `whisper-<name>` in it."""
    if cache_dir is None:
        cache_dir = Path(os.environ["MOLEX_CACHE"]) / "encoders" if os.environ.get("MOLEX_CACHE") else DEFAULT_CACHE
    return Path(cache_dir) / f"whisper-{name}"


def _verify_folder(folder: Path, state: dict[str, np.ndarray]) -> None:
    """Load the folder back with transformers; every key must be used, present and equal to the converted tensor."""
    from transformers import WhisperForConditionalGeneration

    model, info = WhisperForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    problems = {key: value for key, value in info.items() if value}
    if problems:
        raise RuntimeError(f"{folder}: transformers did not load the converted weights cleanly: {problems}")
    loaded = model.state_dict()
    expected_keys = set(state) | {"proj_out.weight"}
    if set(loaded) != expected_keys:
        raise RuntimeError(f"{folder}: keys differ from the conversion: {sorted(set(loaded) ^ expected_keys)[:10]}")
    for key, tensor in loaded.items():
        reference = state["model.decoder.embed_tokens.weight" if key == "proj_out.weight" else key]
        if tensor.dtype != torch.float32 or not torch.equal(tensor, torch.from_numpy(reference)):
            raise RuntimeError(f"{folder}: tensor {key!r} differs from the converted one after loading")


def _file_sizes(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_size for path in sorted(folder.iterdir()) if path.name != MARKER}


def write_whisper_folder(weights: WhisperWeights, folder: Path) -> dict:
    """Convert `weights` into `folder` (which must be new and empty); returns the provenance record written."""
    started = time.perf_counter()
    data, source = read_model_bin(weights)  # size and SHA-256 checked before parsing
    state, dims = whisper_state_dict(parse_ctranslate2_model(data, source))
    del data
    tokenizer, tokenizer_path = read_json(weights.tokenizer, weights)
    ct2_config, ct2_config_path = read_json(weights.ctranslate2_config, weights)
    config, generation, features = build_configs(dims, tokenizer, tokenizer_path, ct2_config, ct2_config_path)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(folder)
    generation.save_pretrained(folder)
    features.save_pretrained(folder)
    shutil.copyfile(tokenizer_path, folder / "tokenizer.json")
    _verify_folder(folder, state)
    record = {
        "model": weights.name,
        "packages": weights.requirements,
        "model_bin_sha256": weights.model_sha256,
        "converter_version": CONVERTER_VERSION,
        "parameters": int(sum(array.size for array in state.values())),
        "files": _file_sizes(folder),
        "seconds": round(time.perf_counter() - started, 2),
    }
    (folder / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    return record


def is_complete(folder: Path, weights: WhisperWeights) -> bool:
    """A finished conversion of these exact weights by this converter version, with every file at its size."""
    try:
        record = json.loads((folder / MARKER).read_text())
        return (
            record["model_bin_sha256"] == weights.model_sha256
            and record["converter_version"] == CONVERTER_VERSION
            and record["files"] == _file_sizes(folder)
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _remove_abandoned_partials(folder: Path) -> None:
    """Delete hidden half-written siblings whose writing process (pid in the name) is gone, e.g. killed."""
    for partial in folder.parent.glob(f".{folder.name}{PARTIAL_PREFIX}*"):
        pid = partial.name.rsplit(PARTIAL_PREFIX, 1)[1].split("-", 1)[0]
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(partial, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def _move_into_place(partial: Path, folder: Path, weights: WhisperWeights) -> None:
    if folder.exists():
        if is_complete(folder, weights):  # another process finished first: keep theirs
            shutil.rmtree(partial)
            return
        if any(folder.iterdir()) and not (folder / MARKER).exists():
            shutil.rmtree(partial)
            raise FileExistsError(
                f"{folder} exists and is not a conversion by this tool; move it away or pick another"
            )
        stale = Path(tempfile.mkdtemp(prefix=f".{folder.name}.stale-", dir=folder.parent))
        folder.rename(stale / folder.name)
        partial.rename(folder)
        shutil.rmtree(stale)
        return
    partial.rename(folder)


def ensure_whisper_folder(name: str, cache_dir: str | Path | None = None, output: str | Path | None = None) -> Path:
    """The transformers folder of Whisper `name` ("tiny.en" or "base"), converting only if no complete one exists.

    The folder is `output` if given, else `default_whisper_folder(name, cache_dir)`. A folder left by an older
    converter version, or whose files no longer have their recorded sizes, is converted again; a folder that this
    tool did not write is never touched.
    """
    if name not in WHISPER_WEIGHTS:
        raise ValueError(f"unknown Whisper model {name!r}; available: {sorted(WHISPER_WEIGHTS)}")
    return ensure_folder_for(
        WHISPER_WEIGHTS[name], Path(output) if output else default_whisper_folder(name, cache_dir)
    )


def ensure_folder_for(weights: WhisperWeights, folder: Path) -> Path:
    """`ensure_whisper_folder` for any pinned `WhisperWeights` (tests use their own small packages)."""
    if is_complete(folder, weights):
        return folder
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).exists():
        raise FileExistsError(f"{folder} exists and is not a conversion by this tool; move it away or pick another")
    for part in (*weights.model_parts, weights.tokenizer, weights.ctranslate2_config):
        locate(part, weights)  # a missing package fails here, before anything is written
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_partials(folder)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}{PARTIAL_PREFIX}{os.getpid()}-", dir=folder.parent))
    umask = os.umask(0)
    os.umask(umask)
    partial.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        write_whisper_folder(weights, partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _move_into_place(partial, folder, weights)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("model", choices=sorted(WHISPER_WEIGHTS), help="which pinned Whisper package to convert")
    parser.add_argument(
        "--output", help="folder to write (default: $MOLEX_CACHE/encoders/whisper-NAME or outputs/encoders/...)"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        folder = ensure_whisper_folder(args.model, output=args.output)
    except (ImportError, ValueError, FileExistsError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    record = json.loads((folder / MARKER).read_text())
    megabytes = sum(record["files"].values()) / 1e6
    print(
        f"{folder}: Whisper {args.model}, {record['parameters'] / 1e6:.1f} M parameters, {megabytes:.1f} MB "
        f"(converted in {record['seconds']} s; this call {time.perf_counter() - started:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
