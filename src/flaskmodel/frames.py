"""The lean Redis protocol of synchronous calls: its keys and its binary frames.

A web process ``LPUSH``es request frames to ``flaskmodel:sync:<model>``, each header naming the
process's reply list ``flaskmodel:replies:<channel>`` (``reply_to``); a worker process ``BRPOP``s
the requests, computes them (through the model's dynamic batcher) and ``LPUSH``es the reply
frames to those lists, refreshing their short TTL (see ``flaskmodel.sync_channel``). Both pushes
go through ``PUSH_SCRIPT``, which keeps frames out of the AOF and the replicas.

A frame is ``b"FMF1"``, a little-endian uint32 header length, a JSON header, then the raw tensor
buffers in header order. Each tensor is ``{"name", "dtype", "shape", "nbytes"}``: numeric buffers
are little-endian, row-major numpy data; ``"string"`` tensors are a 4-byte little-endian length
before each element (as the V2 binary extension does it). No pickle: a frame is only data.
"""

from __future__ import annotations

import logging
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import redis
from redis.client import Pipeline
from redis.commands.core import Script

from flaskmodel import compact_json
from flaskmodel.errors import InvalidInput
from flaskmodel.storage.pipelines import queue_script
from flaskmodel.storage.redis import key
from flaskmodel.tensors import STRING, numpy_dtype

logger = logging.getLogger(__name__)

MAGIC = b"FMF1"
_LENGTH = struct.Struct("<I")


def sync_queue_key(model: str) -> str:
    """The list a model's synchronous requests wait in: ``flaskmodel:sync:<model>``."""
    return key("sync", model)


def reply_list_key(channel: str) -> str:
    """Where one web process's replies go: ``flaskmodel:replies:<channel>``."""
    return key("replies", channel)


# LPUSH of frames and EXPIRE of their list, kept out of the AOF and the replicas (REPL_NONE): a
# synchronous call is at-most-once and dead after its deadline, so replaying it after a restart is
# worthless, while logging it was most of Redis's work per call (a CT slice: a 256 KiB AOF write
# per request). The pops are still logged; replayed, they pop nothing.
PUSH_SCRIPT = """
redis.set_repl(redis.REPL_NONE)
for i = 2, #ARGV, 1000 do
  redis.call('LPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
"""


def register_push(client: redis.Redis) -> Script:
    """``PUSH_SCRIPT`` registered on ``client`` (queue it with ``queue_push``)."""
    return client.register_script(PUSH_SCRIPT)


def queue_push(pipe: Pipeline, push: Script, list_key: str, items: list[bytes], ttl: int) -> None:
    """Queue on ``pipe`` the push of ``items`` to ``list_key`` (as ``LPUSH``, oldest first) and
    its TTL, neither logged; run it with ``storage.pipelines.execute(pipe, push)``."""
    queue_script(pipe, push, [list_key], [ttl, *items])


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
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return array.dtype.name, np.ascontiguousarray(little).tobytes()


def tensor_from_bytes(
    buffer: bytes | memoryview, dtype: str, shape: list[int], what: str
) -> np.ndarray:
    """An array from a frame buffer (numeric buffers are used in place, read-only)."""
    count = math.prod(shape)
    if dtype == STRING:
        return unpack_strings(buffer, count, what).reshape(shape)
    numeric = numpy_dtype(dtype).newbyteorder("<")
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
