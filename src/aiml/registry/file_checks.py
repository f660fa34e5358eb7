"""Cheap checks, at registration, that a model file is what its suffix says.

A file that cannot be the model it claims to be is refused by name (422) when it is
registered, instead of failing at its first use with a 500. Both checks read a few bytes,
not the model: the weights are checked when an engine loads them.

* A ``.gguf`` starts with GGUF's fixed header: magic, a version llama.cpp reads, and tensor
  and metadata counts the file can hold.
* An ``.onnx`` is a protobuf ``ModelProto``. Its top-level fields are walked, seeking past
  each one's bytes (the graph, with the weights inside it, is one such field): every field
  must be well formed and end inside the file, the last one exactly at its end (so a file
  cut short is refused), and ``ir_version``, ``graph`` and (from IR 3 on) ``opset_import``
  must be there, which a PNG or random bytes are not.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from aiml.errors import InvalidRequest

__all__ = ["check_model_file"]

#: GGUF's fixed header: magic, version (uint32), tensor count and metadata count (uint64).
_GGUF_HEADER = struct.Struct("<4sIQQ")
_GGUF_VERSIONS = (2, 3)  # what llama.cpp reads (version 1 is no longer supported)

# ModelProto's fields (onnx.proto3) the check needs, and protobuf's wire types.
_IR_VERSION, _GRAPH, _OPSET_IMPORT = 1, 7, 8
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
_FIXED_BYTES = {_FIXED64: 8, _FIXED32: 4}
# A ModelProto has a handful of top-level fields (metadata entries and functions repeat);
# past this many, the bytes are not one, and walking them would cost the file's length.
_MAX_ONNX_FIELDS = 100_000


def check_model_file(path: Path, fmt: str) -> None:
    """Refuse (422, naming the file) a ``gguf`` or ``onnx`` file that cannot be one."""
    if fmt == "gguf":
        _check_gguf(path)
    elif fmt == "onnx":
        _check_onnx(path)


def _check_gguf(path: Path) -> None:
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(_GGUF_HEADER.size)
    if len(head) < _GGUF_HEADER.size:
        raise _refused(f"{path.name} is {size} bytes: too short for a GGUF header")
    magic, version, tensors, entries = _GGUF_HEADER.unpack(head)
    if magic != b"GGUF":
        raise _refused(f"{path.name} is not a GGUF file (magic {magic!r})")
    if version not in _GGUF_VERSIONS:
        raise _refused(f"{path.name}: unsupported GGUF version {version}")
    if tensors + entries > size:  # each tensor and each metadata entry takes over a byte
        raise _refused(
            f"{path.name}: a GGUF header naming {tensors} tensors and {entries} metadata "
            f"entries in {size} bytes is corrupt"
        )


def _check_onnx(path: Path) -> None:
    size = path.stat().st_size
    seen: dict[int, int] = {}  # field number -> wire type, of the fields found
    ir_version = 0
    with path.open("rb") as handle:
        for _ in range(_MAX_ONNX_FIELDS):
            at = handle.tell()
            if at == size:
                break
            key = _varint(handle)
            number, wire = (key >> 3, key & 7) if key is not None else (0, -1)
            if number == 0 or wire not in (_VARINT, _LENGTH_DELIMITED, *_FIXED_BYTES):
                raise _refused(f"{path.name} is not an ONNX model (no protobuf field at byte {at})")
            if wire == _VARINT:
                value = _varint(handle)
                if value is None:
                    raise _refused(f"{path.name} is cut short (in the field at byte {at})")
                ir_version = value if number == _IR_VERSION else ir_version
            else:
                length = _varint(handle) if wire == _LENGTH_DELIMITED else _FIXED_BYTES[wire]
                end = handle.tell() + (length if length is not None else size)
                if end > size:
                    raise _refused(
                        f"{path.name} is cut short or not an ONNX model: its field at byte "
                        f"{at} runs {end - size} bytes past its end"
                    )
                handle.seek(end)
            seen.setdefault(number, wire)
        else:
            raise _refused(f"{path.name} is not an ONNX model (over {_MAX_ONNX_FIELDS} fields)")
    if seen.get(_IR_VERSION) != _VARINT or ir_version < 1:
        raise _refused(f"{path.name} is not an ONNX model (no ir_version)")
    if seen.get(_GRAPH) != _LENGTH_DELIMITED:
        raise _refused(f"{path.name} is not an ONNX model, or is cut short (no graph)")
    if ir_version >= 3 and seen.get(_OPSET_IMPORT) != _LENGTH_DELIMITED:
        raise _refused(f"{path.name} is not an ONNX model, or is cut short (no opset_import)")


def _varint(handle: BinaryIO) -> int | None:
    """A protobuf varint (at most 10 bytes), or ``None`` where the file ends or it runs on."""
    value = 0
    for shift in range(0, 70, 7):
        byte = handle.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
    return None


def _refused(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="path")
