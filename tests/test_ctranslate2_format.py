"""The CTranslate2 `model.bin` reader: exact on well-formed files, and every malformed one refused with an error that
names the file and the byte offset - never a read past the end or an allocation of a declared size."""

import struct

import numpy as np
import pytest

from tests.ctranslate2_fixtures import encode_ctranslate2
from training.encoders.ctranslate2_format import (
    CTranslate2FormatError,
    parse_ctranslate2_model,
    read_ctranslate2_model,
)


SOURCE = "/some/where/model.bin"


def _sample() -> tuple[dict[str, np.ndarray], dict[str, str]]:
    variables = {
        "decoder/embeddings/weight": np.arange(12, dtype=np.float16).reshape(3, 4),
        "encoder/conv1/weight": np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 4, 3),
        "encoder/num_heads": np.asarray(np.int16(6)),
        "decoder/alignment_layer": np.asarray(np.int16(-1)),
        "decoder/activation": np.asarray(np.int8(3)),
        "some/int32": np.array([1, -2, 3], dtype=np.int32),
        "empty": np.zeros((0, 5), dtype=np.float16),
    }
    return variables, {"decoder/projection/weight": "decoder/embeddings/weight"}


def _refused(data: bytes, *patterns: str) -> str:
    with pytest.raises(CTranslate2FormatError) as caught:
        parse_ctranslate2_model(data, SOURCE)
    message = str(caught.value)
    assert message.startswith(f"{SOURCE}: offset "), message
    for pattern in patterns:
        assert pattern in message, message
    return message


def _patch(data: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(data)
    struct.pack_into(f"<{fmt}", out, offset, value)
    return bytes(out)


def test_every_dtype_shape_and_alias_is_read_exactly(tmp_path):
    variables, aliases = _sample()
    data, _ = encode_ctranslate2(variables, aliases)
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    model = read_ctranslate2_model(path)
    assert (model.binary_version, model.spec_name, model.spec_revision) == (6, "WhisperSpec", 3)
    assert model.source == str(path)
    assert list(model.variables) == list(variables)
    for name, value in variables.items():
        assert model.variables[name].dtype == value.dtype and model.variables[name].shape == value.shape
        np.testing.assert_array_equal(model.variables[name], value)
    assert model.aliases == aliases
    assert model.resolve("decoder/projection/weight") is model.variables["decoder/embeddings/weight"]
    assert model.names() == set(variables) | set(aliases)
    assert not model.variables["encoder/conv1/weight"].flags.writeable  # views into the verified buffer


@pytest.mark.parametrize("cut", [0, 3, 5, 20, 24, 30, 45, 60, -20, -1])
def test_a_truncated_file_is_refused_with_its_offset(cut):
    data, _ = encode_ctranslate2(*_sample())
    message = _refused(data[:cut], "remain")
    offset = int(message.split("offset ")[1].split(":")[0])
    assert 0 <= offset <= len(data[:cut])


def test_an_unknown_or_bfloat16_dtype_code_is_refused():
    variables, aliases = _sample()
    data, offsets = encode_ctranslate2(variables, aliases)
    where = offsets["encoder/conv1/weight", "dtype"]
    _refused(_patch(data, where, "B", 9), f"offset {where}:", "'encoder/conv1/weight'", "dtype code 9 (unknown")
    _refused(_patch(data, where, "B", 5), "dtype code 5 (bfloat16, not supported")


def test_a_huge_declared_byte_count_is_refused_before_any_allocation():
    variables, aliases = _sample()
    data, offsets = encode_ctranslate2(variables, aliases)
    # shape and byte count both say 4 GiB - consistent, but the bytes are not there
    name = "encoder/conv1/weight"
    hostile = _patch(data, offsets[name, "dims"], "I", 2**32 - 1)
    hostile = _patch(hostile, offsets[name, "byte_count"], "I", 2**32 - 4)
    _refused(hostile, "declares 4294967292 bytes, but shape")
    dims = [2**31, 2**31, 2**31]  # 2**95 bytes: computed with Python ints, no overflow to a small number
    hostile = data
    for axis, dim in enumerate(dims):
        hostile = _patch(hostile, offsets[name, "dims"] + 4 * axis, "I", dim)
    _refused(hostile, f"offset {offsets[name, 'byte_count']}:", "shape [2147483648, 2147483648, 2147483648]")


def test_a_byte_count_that_disagrees_with_the_shape_is_refused():
    variables, aliases = _sample()
    data, offsets = encode_ctranslate2(variables, aliases)
    where = offsets["some/int32", "byte_count"]
    _refused(_patch(data, where, "I", 16), f"offset {where}:", "declares 16 bytes, but shape [3] of int32 takes 12")


def test_counts_larger_than_the_file_can_hold_are_refused():
    data, offsets = encode_ctranslate2(*_sample())
    _refused(_patch(data, 22, "I", 2**32 - 1), "offset 22:", "variable count is 4294967295")
    where = offsets["", "alias_count"]
    _refused(_patch(data, where, "I", 10**6), f"offset {where}:", "alias count is 1000000")


def test_a_large_rank_is_refused():
    data, offsets = encode_ctranslate2(*_sample())
    where = offsets["encoder/conv1/weight", "dims"] - 1
    _refused(_patch(data, where, "B", 200), f"offset {where}:", "rank 200")


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("version", 5, "binary version 5, only version 6"),
        ("name_length", 0, "not a non-empty NUL-terminated string"),
        ("name_nul", ord("x"), "not a non-empty NUL-terminated string"),
    ],
)
def test_bad_headers_and_strings_are_refused(field, value, expected):
    data, offsets = encode_ctranslate2(*_sample())
    name_offset = offsets["decoder/embeddings/weight", "name"]
    where = {"version": 0, "name_length": name_offset, "name_nul": offsets["decoder/embeddings/weight", "dims"] - 2}
    fmt = {"version": "I", "name_length": "H", "name_nul": "B"}[field]
    _refused(_patch(data, where[field], fmt, value), expected)


def test_non_utf8_names_duplicates_bad_aliases_and_trailing_bytes_are_refused():
    variables, _ = _sample()
    data, offsets = encode_ctranslate2(variables)
    name_offset = offsets["decoder/embeddings/weight", "name"] + 2
    _refused(_patch(data, name_offset, "B", 0xFF), f"offset {name_offset - 2}:", "not UTF-8")
    twice = {"a": np.zeros(2, np.float32)}
    doubled, _ = encode_ctranslate2(twice)
    body = doubled[26:-4]  # the one variable record, then the alias count
    _refused(doubled[:22] + struct.pack("<I", 2) + body + body + struct.pack("<I", 0), "'a' is defined twice")
    _refused(encode_ctranslate2(variables, {"x": "not/there"})[0], "points at 'not/there', which is not a stored")
    _refused(encode_ctranslate2(variables, {"empty": "some/int32"})[0], "alias 'empty' redefines")
    _refused(data + b"\0\0", "2 unexpected bytes after the alias table")
