"""The CTranslate2 -> transformers Whisper mapping is strict: a file with a tensor too many, one missing, a non-zero
key bias, an untied or biased output projection, a quantized weight, a wrong shape or a decoder setting transformers
cannot represent is refused with the variable and the file named - never converted into a silently different model."""

import numpy as np
import pytest

from tests.ctranslate2_fixtures import ctranslate2_whisper_layout, encode_ctranslate2, random_whisper
from training.encoders.ctranslate2_format import parse_ctranslate2_model
from training.encoders.whisper_from_ctranslate2 import WhisperMappingError, whisper_state_dict


SOURCE = "/pkg/model.bin"


def _convert(variables, aliases):
    return whisper_state_dict(parse_ctranslate2_model(encode_ctranslate2(variables, aliases)[0], SOURCE))


@pytest.fixture(scope="module")
def layout():
    return ctranslate2_whisper_layout(random_whisper(seed=7))


def _edited(layout, **changes):
    variables, aliases = dict(layout[0]), dict(layout[1])
    for name, value in changes.items():
        name = name.replace("__", "/")
        if value is None:
            variables.pop(name, None)
            aliases.pop(name, None)
        else:
            variables[name] = value
            aliases.pop(name, None)
    return variables, aliases


def test_the_unedited_layout_maps_to_every_transformers_key(layout):
    state, dims = _convert(*layout)
    expected = {
        key for key in random_whisper(seed=7).state_dict() if key != "proj_out.weight"
    }  # proj_out is tied, not stored
    assert set(state) == expected
    assert (dims.d_model, dims.encoder_ffn_dim, dims.decoder_ffn_dim, dims.decoder_attention_heads) == (32, 64, 48, 4)
    assert all(value.dtype == np.float32 and value.flags.c_contiguous for value in state.values())


def _refused(layout, pattern, aliases=None, **changes):
    variables, kept_aliases = _edited(layout, **changes)
    with pytest.raises(WhisperMappingError, match=pattern) as caught:
        _convert(variables, kept_aliases if aliases is None else aliases)
    assert str(caught.value).startswith(f"{SOURCE}: ")


def test_an_unexpected_variable_is_refused(layout):
    _refused(
        layout,
        r"1 variables have no place .*'encoder/layer_0/self_attention/extra'",
        **{"encoder__layer_0__self_attention__extra": np.zeros(3, np.float16)},
    )


def test_a_missing_variable_is_refused(layout):
    _refused(
        layout,
        "'decoder/layer_1/attention/linear_2/bias' is missing",
        **{"decoder__layer_1__attention__linear_2__bias": None},
    )
    _refused(
        layout,
        r"decoder layers are \[0, 2\]",
        **{
            name.replace("/", "__").replace("layer_1", "layer_2"): value
            for name, value in layout[0].items()
            if name.startswith("decoder/layer_1/")
        }
        | {name.replace("/", "__"): None for name in layout[0] if name.startswith("decoder/layer_1/")},
    )


def test_a_non_zero_key_bias_is_refused(layout):
    for name, rows in (
        ("encoder/layer_1/self_attention/linear_0/bias", 32),
        ("decoder/layer_0/attention/linear_1/bias", 0),
    ):
        bias = layout[0][name].copy()
        bias[rows + 5] = 0.25
        _refused(
            layout,
            f"'{name}' has a non-zero key bias \\(rows {rows}..{rows + 31}\\)",
            **{name.replace("/", "__"): bias},
        )


def test_an_untied_or_biased_output_projection_is_refused(layout):
    embeddings = layout[0]["decoder/embeddings/weight"]
    _refused(layout, "differs from the embeddings", **{"decoder__projection__weight": embeddings + np.float16(1)})
    _refused(layout, "'decoder/projection/bias' exists", **{"decoder__projection__bias": np.zeros(64, np.float16)})
    _refused(layout, "'decoder/projection/weight' is missing", aliases={})


def test_quantized_wrongly_shaped_and_unrepresentable_settings_are_refused(layout):
    weight = "encoder/layer_0/ffn/linear_0/weight"
    _refused(
        layout,
        f"'{weight}' is int8, expected float16/float32",
        **{weight.replace("/", "__"): np.zeros((64, 32), np.int8)},
    )
    _refused(
        layout,
        rf"'{weight}' has shape \[64, 31\], expected \[64, 32\]",
        **{weight.replace("/", "__"): np.zeros((64, 31), np.float16)},
    )
    _refused(
        layout, "'decoder/activation' is 0; transformers' Whisper needs 3", decoder__activation=np.asarray(np.int8(0))
    )
    _refused(layout, "'decoder/scale_alibi' is 1", decoder__scale_alibi=np.asarray(np.int8(1)))
    _refused(
        layout,
        "'encoder/num_heads' is 5, which does not divide d_model 32",
        encoder__num_heads=np.asarray(np.int16(5)),
    )
    _refused(layout, "'decoder/pre_norm' is missing", decoder__pre_norm=None)


def test_optional_scalars_may_be_absent_as_in_the_packaged_files(layout):
    variables, aliases = _edited(layout, decoder__alibi_use_positive_positions=None, decoder__scale_alibi=None)
    assert set(_convert(variables, aliases)[0]) == set(_convert(*layout)[0])


def test_another_ctranslate2_model_type_is_refused(layout):
    data = encode_ctranslate2(*layout, spec="TransformerSpec")[0]
    with pytest.raises(WhisperMappingError, match=r"^/pkg/model.bin: spec 'TransformerSpec' revision 3, expected"):
        whisper_state_dict(parse_ctranslate2_model(data, SOURCE))
