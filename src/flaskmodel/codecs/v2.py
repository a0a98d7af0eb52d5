"""Open Inference Protocol (KServe V2) tensors: JSON ``data``, the binary tensor extension, and
the classification extension. Pure numpy and pydantic; the web tier's ``infer_v2`` uses it.

A binary body is the JSON header (``Inference-Header-Content-Length`` bytes) followed by the
inputs' raw blobs in the order the JSON lists them; an input sent that way carries
``"parameters": {"binary_data_size": n}`` and no ``data``. Blobs are little-endian row-major,
BOOL one byte per element, BYTES a 4-byte little-endian length before each element.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from flaskmodel.codecs.raw import tensor_bytes, tensor_from_bytes
from flaskmodel.codecs.tfserving_json import STRING, cast_checked, check_shape, numpy_dtype
from flaskmodel.errors import InvalidInput
from flaskmodel.schemas import ModelSpec

#: V2 datatype → ``TensorSpec.dtype``.
DATATYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": STRING,
}
_TO_V2 = {dtype: datatype for datatype, dtype in DATATYPES.items()}


@functools.cache
def _datatype_of(dtype: np.dtype[Any]) -> str:
    """``v2_datatype`` of a numpy dtype (its ``name`` costs a small answer ~5 µs a lookup)."""
    return v2_datatype(dtype.name)


def v2_datatype(dtype: str) -> str:
    """The V2 datatype of a ``TensorSpec.dtype`` or numpy dtype name (``object`` is BYTES)."""
    if dtype in ("object", "bytes") or dtype.startswith(("bytes", "str")):
        return "BYTES"
    found = _TO_V2.get(dtype)
    if found is None:
        raise InvalidInput(f"dtype {dtype} has no Open Inference Protocol datatype")
    return found


class InferInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int]
    datatype: str
    data: Any = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(BaseModel):
    """``POST /v2/models/<m>[/versions/<v>]/infer``."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[InferOutput] | None = None


def split_body(raw: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary blobs of a body (all JSON without the header)."""
    if header_length is None:
        return raw, b""
    try:
        size = int(header_length)
    except ValueError as exc:
        raise InvalidInput(f"Inference-Header-Content-Length is not a number: {exc}") from exc
    if not 0 < size <= len(raw):
        raise InvalidInput(
            f"Inference-Header-Content-Length {size} does not fit a body of {len(raw)} bytes"
        )
    return raw[:size], raw[size:]


def decode_inputs(request: InferRequest, blobs: bytes, spec: ModelSpec) -> dict[str, np.ndarray]:
    """The request's input arrays, checked against the model's signature (400 otherwise)."""
    wanted = {t.name: t for t in spec.inputs}
    given = [i.name for i in request.inputs]
    if sorted(given) != sorted(wanted):
        raise InvalidInput(f"model '{spec.name}' takes inputs {sorted(wanted)}, got {given}")
    arrays: dict[str, np.ndarray] = {}
    view = memoryview(blobs)
    offset = 0
    for tensor in request.inputs:
        expected = wanted[tensor.name]
        datatype = v2_datatype(expected.dtype)
        if tensor.datatype != datatype:
            raise InvalidInput(
                f"input '{tensor.name}' has datatype {tensor.datatype}; "
                f"model '{spec.name}' expects {datatype}"
            )
        if any(d < 0 for d in tensor.shape):
            raise InvalidInput(f"input '{tensor.name}' has a negative dimension: {tensor.shape}")
        size = tensor.parameters.get("binary_data_size")
        if size is not None:
            if tensor.data is not None:
                raise InvalidInput(f"input '{tensor.name}' has both data and binary_data_size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"input '{tensor.name}': binary_data_size must be an integer")
            if offset + size > len(view):
                raise InvalidInput(
                    f"input '{tensor.name}': binary data ends {offset + size - len(view)} bytes "
                    "early"
                )
            array = _binary(view[offset : offset + size], tensor)
            offset += size
        elif tensor.data is None:
            raise InvalidInput(f"input '{tensor.name}' has neither data nor binary_data_size")
        else:
            array = _json(tensor)
        check_shape(array, expected)
        arrays[tensor.name] = array
    if offset != len(view):
        raise InvalidInput(f"{len(view) - offset} bytes of binary data belong to no input")
    batch = {a.shape[0] for a in arrays.values() if a.ndim}
    if len(batch) > 1:
        raise InvalidInput(f"inputs disagree on the batch size: {sorted(batch)}")
    return arrays


def _binary(blob: memoryview, tensor: InferInput) -> np.ndarray:
    what = f"input '{tensor.name}'"
    if tensor.datatype == "BOOL":
        flags: np.ndarray = tensor_from_bytes(blob, "uint8", tensor.shape, what) != 0
        return flags
    return tensor_from_bytes(blob, DATATYPES[tensor.datatype], tensor.shape, what)


def _json(tensor: InferInput) -> np.ndarray:
    count = math.prod(tensor.shape)  # np.prod of a short list costs a small request ~5 us
    if tensor.datatype == "BYTES":
        flat: list[bytes] = []
        _flatten_strings(tensor.data, flat, tensor.name)
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
    else:
        try:
            array = np.asarray(tensor.data)
        except ValueError as exc:
            raise InvalidInput(f"input '{tensor.name}' data is not rectangular: {exc}") from exc
        kind = "b" if tensor.datatype == "BOOL" else "iu"
        if tensor.datatype.startswith("FP"):
            kind = "iuf"
        if array.dtype == object or array.dtype.kind not in kind:
            raise InvalidInput(
                f"input '{tensor.name}' data must hold {tensor.datatype} values, "
                f"got {array.dtype.name if array.dtype != object else 'mixed'} values"
            )
        dtype = numpy_dtype(DATATYPES[tensor.datatype])
        if dtype.kind in "iu" and array.size:
            info = np.iinfo(dtype)
            if array.min() < info.min or array.max() > info.max:
                raise InvalidInput(f"input '{tensor.name}' holds values outside {tensor.datatype}")
        # (floats are taken only into FP datatypes, where ``cast_checked`` refuses NaN)
        what = f"input '{tensor.name}'"
        array = cast_checked(array, dtype, what, f"values outside {tensor.datatype}")
    if array.size != count:
        raise InvalidInput(
            f"input '{tensor.name}' has {array.size} values; shape {tensor.shape} needs {count}"
        )
    shaped: np.ndarray = array.reshape(tensor.shape)
    return shaped


def _flatten_strings(node: Any, out: list[bytes], name: str) -> None:
    if isinstance(node, list):
        for child in node:
            _flatten_strings(child, out, name)
    elif isinstance(node, str):
        out.append(node.encode())
    else:
        raise InvalidInput(f"input '{name}' is BYTES: its data must be strings")


def check_outputs(request: InferRequest, spec: ModelSpec) -> list[str] | None:
    """The output names asked for (None: all), each known to the model and well formed."""
    if request.outputs is None:
        return None
    known = [t.name for t in spec.outputs]
    for output in request.outputs:
        if output.name not in known:
            raise InvalidInput(f"model '{spec.name}' has no output '{output.name}' (has {known})")
        top = output.parameters.get("classification")
        if top is not None and (not isinstance(top, int) or isinstance(top, bool) or top < 1):
            raise InvalidInput(f"output '{output.name}': classification must be an integer ≥ 1")
    return [o.name for o in request.outputs]


def classify(scores: np.ndarray, top: int, class_names: list[str] | None) -> np.ndarray:
    """The classification extension: ``"<score>:<index>[:<label>]"`` for the top classes."""
    if scores.ndim == 0 or scores.dtype.kind not in "iuf":
        raise InvalidInput("classification needs a numeric output with classes on its last axis")
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :top]
    picked = np.take_along_axis(scores, order, axis=-1)
    out = np.empty(order.shape, dtype=object)
    for pos in np.ndindex(order.shape):
        index = int(order[pos])
        label = f":{class_names[index]}" if class_names and index < len(class_names) else ""
        out[pos] = f"{float(picked[pos]):f}:{index}{label}".encode()
    return out


def encode_outputs(
    request: InferRequest,
    spec: ModelSpec,
    outputs: dict[str, np.ndarray],
    classes: list[str] | None,
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The response's ``outputs`` entries and, in the same order, the binary blobs."""
    binary_default = bool(request.parameters.get("binary_data_output", False))
    asked = (
        [(o.name, o.parameters) for o in request.outputs]
        if request.outputs
        else [(t.name, {}) for t in spec.outputs]
    )
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, parameters in asked:
        array = outputs[name]
        top = parameters.get("classification")
        if top is not None:
            array = classify(array, int(top), classes)
        entry: dict[str, Any] = {
            "name": name,
            "datatype": _datatype_of(array.dtype),
            "shape": list(array.shape),
        }
        if parameters.get("binary_data", binary_default):
            _, blob = tensor_bytes(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif array.dtype == object:
            # JSON strings must be text; BYTES that are not UTF-8 need binary_data.
            entry["data"] = [
                (b if isinstance(b, bytes) else str(b).encode()).decode(errors="replace")
                for b in array.reshape(-1).tolist()
            ]
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    return entries, blobs
