"""Map a parsed CTranslate2 `WhisperSpec` onto the state dict of `transformers`' `WhisperForConditionalGeneration`.

Why strict: a converter that silently drops or misplaces one tensor still produces a model that loads and runs, and
gives features that are merely worse - the worst kind of bug here. So every name in the file is either mapped,
checked against the value the transformers architecture implies (scalars, the all-zero key biases, the tied output
projection) or listed in `IGNORED_VARIABLES` with the reason; every shape is checked against the dimensions read
from the file, and the error names the CTranslate2 variable and the file.

The inverse of CTranslate2's own `WhisperLoader` (ctranslate2/converters/transformers.py):
- `*/self_attention/linear_0` is q, k and v fused along the output axis; split in thirds. Whisper's k projection has
  no bias: CTranslate2 stores zeros there, which must be zeros.
- the decoder's cross attention: `attention/linear_0` is q, `attention/linear_1` holds k and v, `linear_2` is out.
- `gamma`/`beta` are LayerNorm weight/bias; `ffn/linear_0`/`linear_1` are fc1/fc2; `position_encodings/encodings`
  are the `embed_positions` tables; `decoder/projection/weight` (an alias of the embeddings) is the tied `proj_out`.
"""

import re
from dataclasses import dataclass

import numpy as np

from training.encoders.ctranslate2_format import CTranslate2Model


EXPECTED_SPEC = ("WhisperSpec", 3)
GELU = 3  # CTranslate2's Activation enum: RELU 0, GELUTanh 1, SWISH 2, GELU 3
# Scalars CTranslate2 writes for the decoder, with the only value transformers' Whisper decoder can represent.
REQUIRED_SCALARS = {
    "decoder/activation": GELU,
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/alibi": 0,
}
# Written by newer converters only (4.x): same rule, but may be absent.
OPTIONAL_SCALARS = {
    "decoder/start_from_zero_embedding": 0,
    "decoder/alibi_use_positive_positions": 0,
    "decoder/scale_alibi": 0,
}
IGNORED_VARIABLES = {
    # CTranslate2's runtime defaults for `return_alignments` (layer -1, 1 head); the real alignment heads are in the
    # package's config.json and go to generation_config.json.
    "decoder/alignment_layer": "runtime default for CTranslate2's word alignment",
    "decoder/alignment_heads": "runtime default for CTranslate2's word alignment",
}


class WhisperMappingError(ValueError):
    """The file is valid CTranslate2 but not a Whisper model transformers can hold exactly."""


@dataclass(frozen=True)
class WhisperDimensions:
    """The architecture read off the tensors: the fields of `WhisperConfig` that fix every weight shape."""

    num_mel_bins: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_attention_heads: int
    decoder_attention_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    max_source_positions: int
    max_target_positions: int
    vocab_size: int


class _Variables:
    """Hands out the file's tensors by name, checking dtype and shape, and remembers which names were used."""

    def __init__(self, model: CTranslate2Model) -> None:
        self.model = model
        self.used: set[str] = set()

    def fail(self, message: str) -> WhisperMappingError:
        return WhisperMappingError(f"{self.model.source}: {message}")

    def has(self, name: str) -> bool:
        return name in self.model.names()

    def array(self, name: str) -> np.ndarray:
        if not self.has(name):
            raise self.fail(f"variable {name!r} is missing (not a complete Whisper model)")
        self.used.add(name)
        return self.model.resolve(name)

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A floating-point tensor of exactly `shape`, as float32 (float16 -> float32 is exact)."""
        value = self.array(name)
        if value.dtype.kind != "f":
            raise self.fail(f"variable {name!r} is {value.dtype.name}, expected float16/float32 (quantized file?)")
        if value.shape != shape:
            raise self.fail(f"variable {name!r} has shape {list(value.shape)}, expected {list(shape)}")
        return value.astype(np.float32)

    def scalar(self, name: str) -> int:
        value = self.array(name)
        if value.ndim != 0:
            raise self.fail(f"variable {name!r} should be a scalar, has shape {list(value.shape)}")
        return value.item()

    def check_scalar(self, name: str, expected: int) -> None:
        found = self.scalar(name)
        if found != expected:
            raise self.fail(f"variable {name!r} is {found}; transformers' Whisper needs {expected}")

    def unused(self) -> list[str]:
        return sorted(self.model.names() - self.used - set(IGNORED_VARIABLES))


def _layer_count(variables: _Variables, stack: str) -> int:
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    indices = {int(match.group(1)) for name in variables.model.names() if (match := pattern.match(name))}
    if not indices or indices != set(range(len(indices))):
        raise variables.fail(f"{stack} layers are {sorted(indices)}, expected 0..N-1 with N >= 1")
    return len(indices)


def _heads(variables: _Variables, stack: str, d_model: int) -> int:
    heads = variables.scalar(f"{stack}/num_heads")
    if heads < 1 or d_model % heads:
        raise variables.fail(f"variable '{stack}/num_heads' is {heads}, which does not divide d_model {d_model}")
    return heads


def read_dimensions(variables: _Variables) -> WhisperDimensions:
    """Every size from the tensors themselves (conv1 gives d_model and mel bins, layer 0's fc1 the FFN width)."""
    conv1 = variables.array("encoder/conv1/weight")
    if conv1.ndim != 3 or conv1.shape[2] != 3:
        raise variables.fail(f"variable 'encoder/conv1/weight' has shape {list(conv1.shape)}, expected [d, mels, 3]")
    d_model, mel_bins = conv1.shape[:2]
    positions = {
        stack: variables.array(f"{stack}/position_encodings/encodings").shape[0] for stack in ("encoder", "decoder")
    }
    return WhisperDimensions(
        num_mel_bins=mel_bins,
        d_model=d_model,
        encoder_layers=_layer_count(variables, "encoder"),
        decoder_layers=_layer_count(variables, "decoder"),
        encoder_attention_heads=_heads(variables, "encoder", d_model),
        decoder_attention_heads=_heads(variables, "decoder", d_model),
        encoder_ffn_dim=variables.array("encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn_dim=variables.array("decoder/layer_0/ffn/linear_0/weight").shape[0],
        max_source_positions=positions["encoder"],
        max_target_positions=positions["decoder"],
        vocab_size=variables.array("decoder/embeddings/weight").shape[0],
    )


def _linear(variables, source: str, target: str, out_features: int, in_features: int) -> dict[str, np.ndarray]:
    return {
        f"{target}.weight": variables.tensor(f"{source}/weight", (out_features, in_features)),
        f"{target}.bias": variables.tensor(f"{source}/bias", (out_features,)),
    }


def _layer_norm(variables: _Variables, source: str, target: str, width: int) -> dict[str, np.ndarray]:
    return {
        f"{target}.weight": variables.tensor(f"{source}/gamma", (width,)),
        f"{target}.bias": variables.tensor(f"{source}/beta", (width,)),
    }


def _fused_projections(variables, source: str, target: str, parts: tuple[str, ...], d: int) -> dict[str, np.ndarray]:
    """Split a fused linear (q|k|v or k|v) into transformers' separate projections; k has no bias there."""
    weight = variables.tensor(f"{source}/weight", (len(parts) * d, d))
    bias = variables.tensor(f"{source}/bias", (len(parts) * d,))
    tensors = {}
    for index, part in enumerate(parts):
        rows = slice(index * d, (index + 1) * d)
        tensors[f"{target}.{part}.weight"] = np.ascontiguousarray(weight[rows])
        if part == "k_proj":
            if np.any(bias[rows] != 0):
                raise variables.fail(
                    f"variable '{source}/bias' has a non-zero key bias (rows {index * d}..{(index + 1) * d - 1}); "
                    "transformers' Whisper k_proj has no bias, so converting would silently change the model"
                )
        else:
            tensors[f"{target}.{part}.bias"] = np.ascontiguousarray(bias[rows])
    return tensors


def _layer(variables: _Variables, stack: str, index: int, dims: WhisperDimensions) -> dict[str, np.ndarray]:
    source, target, d = f"{stack}/layer_{index}", f"model.{stack}.layers.{index}", dims.d_model
    ffn = dims.encoder_ffn_dim if stack == "encoder" else dims.decoder_ffn_dim
    tensors = {
        **_layer_norm(variables, f"{source}/self_attention/layer_norm", f"{target}.self_attn_layer_norm", d),
        **_fused_projections(
            variables, f"{source}/self_attention/linear_0", f"{target}.self_attn", ("q_proj", "k_proj", "v_proj"), d
        ),
        **_linear(variables, f"{source}/self_attention/linear_1", f"{target}.self_attn.out_proj", d, d),
        **_layer_norm(variables, f"{source}/ffn/layer_norm", f"{target}.final_layer_norm", d),
        **_linear(variables, f"{source}/ffn/linear_0", f"{target}.fc1", ffn, d),
        **_linear(variables, f"{source}/ffn/linear_1", f"{target}.fc2", d, ffn),
    }
    if stack == "decoder":
        cross = f"{source}/attention"
        tensors |= {
            **_layer_norm(variables, f"{cross}/layer_norm", f"{target}.encoder_attn_layer_norm", d),
            **_linear(variables, f"{cross}/linear_0", f"{target}.encoder_attn.q_proj", d, d),
            **_fused_projections(variables, f"{cross}/linear_1", f"{target}.encoder_attn", ("k_proj", "v_proj"), d),
            **_linear(variables, f"{cross}/linear_2", f"{target}.encoder_attn.out_proj", d, d),
        }
    return tensors


def _check_tied_projection(variables: _Variables, embeddings: np.ndarray) -> None:
    """transformers ties `proj_out` to the token embeddings; the file must say the same (alias or equal copy)."""
    projection = variables.tensor("decoder/projection/weight", embeddings.shape)
    if not np.array_equal(projection, embeddings):
        raise variables.fail(
            "variable 'decoder/projection/weight' differs from the embeddings (an untied output layer)"
        )
    if variables.has("decoder/projection/bias"):
        raise variables.fail("variable 'decoder/projection/bias' exists; transformers' Whisper proj_out has no bias")


def whisper_state_dict(model: CTranslate2Model) -> tuple[dict[str, np.ndarray], WhisperDimensions]:
    """The float32 state dict (transformers names, tied `proj_out` left out) and the dimensions of the model."""
    variables = _Variables(model)
    if (model.spec_name, model.spec_revision) != EXPECTED_SPEC:
        raise variables.fail(f"spec {model.spec_name!r} revision {model.spec_revision}, expected {EXPECTED_SPEC}")
    for name, expected in REQUIRED_SCALARS.items():
        variables.check_scalar(name, expected)
    for name, expected in OPTIONAL_SCALARS.items():
        if variables.has(name):
            variables.check_scalar(name, expected)
    dims = read_dimensions(variables)
    d = dims.d_model
    state = {
        "model.encoder.conv1.weight": variables.tensor("encoder/conv1/weight", (d, dims.num_mel_bins, 3)),
        "model.encoder.conv1.bias": variables.tensor("encoder/conv1/bias", (d,)),
        "model.encoder.conv2.weight": variables.tensor("encoder/conv2/weight", (d, d, 3)),
        "model.encoder.conv2.bias": variables.tensor("encoder/conv2/bias", (d,)),
        "model.encoder.embed_positions.weight": variables.tensor(
            "encoder/position_encodings/encodings", (dims.max_source_positions, d)
        ),
        **_layer_norm(variables, "encoder/layer_norm", "model.encoder.layer_norm", d),
        "model.decoder.embed_tokens.weight": variables.tensor("decoder/embeddings/weight", (dims.vocab_size, d)),
        "model.decoder.embed_positions.weight": variables.tensor(
            "decoder/position_encodings/encodings", (dims.max_target_positions, d)
        ),
        **_layer_norm(variables, "decoder/layer_norm", "model.decoder.layer_norm", d),
    }
    for stack, count in (("encoder", dims.encoder_layers), ("decoder", dims.decoder_layers)):
        for index in range(count):
            state |= _layer(variables, stack, index, dims)
    _check_tied_projection(variables, state["model.decoder.embed_tokens.weight"])
    if leftover := variables.unused():
        raise variables.fail(f"{len(leftover)} variables have no place in transformers' Whisper: {leftover[:10]}")
    return state, dims
