"""Raw tensor frames: a JSON header and the tensors' raw buffers in one byte string.

A frame is ``b"FMF1"``, a little-endian uint32 header length, a JSON header, then the raw tensor
buffers in header order. Each tensor is ``{"name", "dtype", "shape", "nbytes"}``: numeric buffers
are little-endian, row-major numpy data; ``"string"`` tensors are a 4-byte little-endian length
before each element (as the V2 binary extension does it). No pickle: a frame is only data. The
synchronous call path (``flaskmodel.sync``) carries them through Redis; the V2 binary extension
reuses the tensor buffers.
"""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from flaskmodel.codecs import compact_json
from flaskmodel.codecs.tfserving_json import STRING, numpy_dtype
from flaskmodel.errors import InvalidInput

MAGIC = b"FMF1"
_LENGTH = struct.Struct("<I")


@dataclass
class Frame:
    """A decoded frame: its JSON header (without the tensor table) and its tensors."""

    header: dict[str, Any]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


def pack_strings(array: np.ndarray) -> bytes:
    """Row-major elements of an object/bytes array, each behind a 4-byte LE length."""
    parts = []
    for item in array.reshape(-1).tolist():
        raw = item if isinstance(item, bytes) else str(item).encode()
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def unpack_strings(buffer: bytes | memoryview, count: int, what: str) -> np.ndarray:
    """The inverse of ``pack_strings``: a flat object array of ``count`` bytes elements."""
    view = memoryview(buffer)
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise InvalidInput(f"{what}: string data ends after {i} of {count} elements")
        (size,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + size > len(view):
            raise InvalidInput(f"{what}: string element {i} runs past the end of its data")
        out[i] = bytes(view[offset : offset + size])
        offset += size
    if offset != len(view):
        raise InvalidInput(f"{what}: {len(view) - offset} bytes left after {count} elements")
    return out


def tensor_bytes(array: np.ndarray) -> tuple[str, bytes]:
    """The frame dtype name and buffer of ``array``."""
    if array.dtype == object or array.dtype.kind in "SU":
        return STRING, pack_strings(array)
    name, little = _numeric(array.dtype)
    return name, array.astype(little, copy=False).tobytes()  # row-major, whatever its layout


@functools.lru_cache(maxsize=64)
def _numeric(dtype: np.dtype[Any]) -> tuple[str, np.dtype[Any]]:
    """A numeric dtype's frame name and little-endian form (``name`` alone costs ~2 µs)."""
    return dtype.name, dtype.newbyteorder("<")


@functools.lru_cache(maxsize=64)
def _little(dtype: str) -> np.dtype[Any]:
    """The little-endian numpy dtype of a frame's numeric dtype name."""
    return numpy_dtype(dtype).newbyteorder("<")


def tensor_from_bytes(
    buffer: bytes | memoryview, dtype: str, shape: list[int], what: str
) -> np.ndarray:
    """An array from a frame buffer (numeric buffers are used in place, read-only)."""
    count = math.prod(shape)
    if dtype == STRING:
        return unpack_strings(buffer, count, what).reshape(shape)
    numeric = _little(dtype)
    if len(buffer) != count * numeric.itemsize:
        raise InvalidInput(
            f"{what}: {len(buffer)} bytes do not hold shape {shape} of {dtype} "
            f"({count * numeric.itemsize} bytes)"
        )
    return np.frombuffer(buffer, dtype=numeric).reshape(shape)


def encode(header: dict[str, Any], tensors: dict[str, np.ndarray] | None = None) -> bytes:
    """A frame holding ``header`` and ``tensors``."""
    table = []
    blobs = []
    for name, array in (tensors or {}).items():
        dtype, blob = tensor_bytes(array)
        table.append(
            {"name": name, "dtype": dtype, "shape": list(array.shape), "nbytes": len(blob)}
        )
        blobs.append(blob)
    raw = compact_json.dumps({**header, "tensors": table})
    return b"".join([MAGIC, _LENGTH.pack(len(raw)), raw, *blobs])


def decode(frame: bytes) -> Frame:
    """The header and tensors of a frame; ``InvalidInput`` when it is not one."""
    if frame[:4] != MAGIC or len(frame) < 8:
        raise InvalidInput("not a FlaskModel frame")
    (size,) = _LENGTH.unpack_from(frame, 4)
    try:
        header = orjson.loads(frame[8 : 8 + size])
    except orjson.JSONDecodeError as exc:  # also text that is not UTF-8
        raise InvalidInput(f"frame header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise InvalidInput("frame header is not a JSON object")
    view = memoryview(frame)
    offset = 8 + size
    tensors = {}
    for entry in header.pop("tensors", []):
        end = offset + int(entry["nbytes"])
        if end > len(frame):
            raise InvalidInput(f"frame tensor {entry['name']!r} runs past the end of the frame")
        tensors[entry["name"]] = tensor_from_bytes(
            view[offset:end], entry["dtype"], list(entry["shape"]), f"tensor {entry['name']!r}"
        )
        offset = end
    if offset != len(frame):
        raise InvalidInput(f"frame has {len(frame) - offset} bytes after its tensors")
    return Frame(header, tensors)
