"""Tensor payloads in TF Serving's row and columnar JSON forms, checked against a signature.

Pure numpy, used by the web tier (to refuse bad input with 400 before queueing), the worker (to
build the arrays it feeds the model) and the TF Serving REST runtime (to talk to a real server).
String tensors are numpy object arrays of ``bytes``; on the wire they are JSON strings or
``{"b64": "<base64>"}`` objects, and outputs whose name ends in ``_bytes`` always go out as b64.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from flaskmodel.codecs.fast_json import FlatTensor
from flaskmodel.errors import InvalidInput
from flaskmodel.schemas import ModelSpec, TensorSpec

STRING = "string"


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype of a ``TensorSpec.dtype`` (object for TensorFlow strings)."""
    return np.dtype(object) if name == STRING else np.dtype(name)


def decode_inputs(
    inputs: Any, spec: ModelSpec, *, row_format: bool | None = None
) -> dict[str, np.ndarray]:
    """Arrays keyed by input name from a row-format list or a columnar value.

    ``row_format`` None guesses from the type (a list is rows, an object is columns), which is
    what the jobs API does; the TF Serving API says which key (``instances``/``inputs``) it used.
    A ``FlatTensor`` (``json_tensors.lift_tensor``) is the single input's whole tensor in either.
    """
    names = [t.name for t in spec.inputs]
    if isinstance(inputs, FlatTensor) and len(names) == 1:
        return {names[0]: _to_array(inputs, spec.inputs[0])}
    if row_format is None:
        row_format = isinstance(inputs, list)
    if row_format:
        if not isinstance(inputs, list) or not inputs:
            raise InvalidInput("'instances' must be a non-empty list, one entry per example")
        keyed = any(isinstance(row, dict) and not _is_b64(row) for row in inputs)
        if not keyed and len(names) == 1:
            columns = {names[0]: inputs}
        else:
            for i, row in enumerate(inputs):
                if not isinstance(row, dict) or set(row) != set(names):
                    raise InvalidInput(
                        f"example {i}: model '{spec.name}' takes inputs {names}, "
                        "each example an object keyed by input name"
                    )
            columns = {name: [row[name] for row in inputs] for name in names}
    elif isinstance(inputs, dict) and not _is_b64(inputs):
        if set(inputs) != set(names):
            if len(names) == 1 and names[0] not in inputs:
                raise InvalidInput(
                    f"model '{spec.name}' takes input {names[0]!r}, got {sorted(inputs)}"
                )
            raise InvalidInput(f"model '{spec.name}' takes inputs {names}, got {sorted(inputs)}")
        columns = dict(inputs)
    elif len(names) == 1:
        columns = {names[0]: inputs}
    else:
        raise InvalidInput(
            f"model '{spec.name}' takes inputs {names}: give an object keyed by name"
        )
    arrays = {t.name: _to_array(columns[t.name], t) for t in spec.inputs}
    batch = {a.shape[0] for a in arrays.values()}
    if len(batch) > 1:
        raise InvalidInput(f"inputs disagree on the batch size: {sorted(batch)}")
    return arrays


def _to_array(value: Any, spec: TensorSpec) -> np.ndarray:
    is_string = spec.dtype == STRING
    array = _string_array(value, spec.name) if is_string else _number_array(value, spec)
    check_shape(array, spec)
    return array


def _number_array(value: Any, spec: TensorSpec) -> np.ndarray:
    dtype = numpy_dtype(spec.dtype)
    try:
        array = value.array() if isinstance(value, FlatTensor) else np.asarray(value)
    except ValueError as exc:
        raise InvalidInput(f"input {spec.name!r} is not a rectangular tensor: {exc}") from exc
    if array.dtype == object or array.dtype.kind not in "fiub":
        raise InvalidInput(f"input {spec.name!r} must hold numbers of type {spec.dtype}")
    if dtype.kind in "iu" and array.dtype.kind == "f":
        raise InvalidInput(f"input {spec.name!r} must hold integers ({spec.dtype})")
    # Into a float dtype ``cast_checked`` finds NaN or infinity given; into any other, this does.
    if array.dtype.kind == "f" and dtype.kind != "f" and not np.isfinite(array).all():
        raise InvalidInput(f"input {spec.name!r} holds NaN or infinity")
    if dtype.kind in "iu" and array.size:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidInput(f"input {spec.name!r} holds a number out of range for {spec.dtype}")
    return cast_checked(
        array, dtype, f"input {spec.name!r}", f"a number too large for {spec.dtype}"
    )


def cast_checked(array: np.ndarray, dtype: np.dtype[Any], what: str, too_large: str) -> np.ndarray:
    """``array`` as ``dtype``; a 400 (``what`` holds ...) for NaN or infinity given, or
    ``too_large`` for a number the cast made infinite. One finiteness check of the result finds
    both, so a valid input pays one; the input is looked at again only to say which it was."""
    with np.errstate(over="ignore"):  # checked just below: a silent cast to inf is refused
        converted = array.astype(dtype, copy=False)
    if dtype.kind == "f" and not np.isfinite(converted).all():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidInput(f"{what} holds NaN or infinity")
        raise InvalidInput(f"{what} holds {too_large}")
    return converted


def check_shape(array: np.ndarray, spec: TensorSpec) -> None:
    """400 unless ``array`` has the rank and fixed sizes of ``spec`` and a non-empty batch."""
    if array.ndim != len(spec.shape):
        raise InvalidInput(
            f"input {spec.name!r} must have {len(spec.shape)} dimensions "
            f"(shape {shape_text(spec.shape)}), got shape {list(array.shape)}"
        )
    for got, want in zip(array.shape, spec.shape, strict=True):
        if want is not None and got != want:
            raise InvalidInput(
                f"input {spec.name!r} must have shape {shape_text(spec.shape)}, "
                f"got {list(array.shape)}"
            )
    if array.ndim and array.shape[0] == 0:
        raise InvalidInput(f"input {spec.name!r} has an empty batch")


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _string_array(value: Any, name: str) -> np.ndarray:
    """An object array of bytes from nested lists of strings or ``{"b64": ...}`` objects."""
    shape: list[int] = []
    probe = value
    while isinstance(probe, list):
        shape.append(len(probe))
        probe = probe[0] if probe else None
    flat: list[bytes] = []

    def walk(node: Any, depth: int) -> None:
        if depth == len(shape):
            flat.append(_string_leaf(node, name))
            return
        if not isinstance(node, list) or len(node) != shape[depth]:
            raise InvalidInput(f"input {name!r} is not a rectangular tensor")
        for child in node:
            walk(child, depth + 1)

    walk(value, 0)
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)


def _string_leaf(node: Any, name: str) -> bytes:
    if isinstance(node, str):
        return node.encode()
    if _is_b64(node) and isinstance(node["b64"], str):
        try:
            return base64.b64decode(node["b64"], validate=True)
        except binascii.Error as exc:
            raise InvalidInput(f"input {name!r}: invalid base64: {exc}") from exc
    raise InvalidInput(f"input {name!r} must hold strings or {{'b64': ...}} objects")


def shape_text(shape: list[int | None]) -> str:
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"


def to_json(name: str, value: np.ndarray, *, force_b64: bool = False) -> Any:
    """``value`` as nested JSON lists; strings as text, or b64 (``_bytes`` names, non-UTF-8)."""
    if value.dtype != object and value.dtype.kind != "S":
        return value.tolist()
    b64 = force_b64 or name.endswith("_bytes")

    def leaf(item: Any) -> Any:
        raw = item if isinstance(item, bytes) else str(item).encode()
        if not b64:
            try:
                return raw.decode()
            except UnicodeDecodeError:
                pass  # not text: fall through to the binary form TF Serving also understands
        return {"b64": base64.b64encode(raw).decode("ascii")}

    def walk(node: Any) -> Any:
        return [walk(child) for child in node] if isinstance(node, list) else leaf(node)

    return walk(value.tolist())


def encode_outputs(outputs: dict[str, np.ndarray], *, row_format: bool) -> dict[str, Any]:
    """TF Serving's response body: ``predictions`` (row request) or ``outputs`` (columnar)."""
    lists = {name: to_json(name, value) for name, value in outputs.items()}
    if row_format:
        if len(lists) == 1:
            return {"predictions": next(iter(lists.values()))}
        batch = len(next(iter(lists.values())))
        return {"predictions": [{k: v[i] for k, v in lists.items()} for i in range(batch)]}
    if len(lists) == 1:
        return {"outputs": next(iter(lists.values()))}
    return {"outputs": lists}


def encode_columnar(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Columnar ``inputs`` for a TF Serving request (strings always as b64: lossless)."""
    return {name: to_json(name, value, force_b64=True) for name, value in arrays.items()}


def decode_outputs(outputs: Any, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Arrays from a columnar ``outputs`` value (bare when the model has a single output)."""
    if len(spec.outputs) == 1 and not (
        isinstance(outputs, dict) and set(outputs) == {spec.outputs[0].name}
    ):
        outputs = {spec.outputs[0].name: outputs}
    if not isinstance(outputs, dict):
        raise InvalidInput(f"model '{spec.name}': outputs must be an object keyed by name")
    arrays = {}
    for tensor in spec.outputs:
        if tensor.name in outputs:
            value = outputs[tensor.name]
            if tensor.dtype == STRING:
                arrays[tensor.name] = _string_array(value, tensor.name)
            else:
                arrays[tensor.name] = np.asarray(value, dtype=numpy_dtype(tensor.dtype))
    return arrays


#: TensorFlow's ``DataType`` enum names (TF Serving metadata) by ``TensorSpec.dtype``.
TF_DTYPES = {
    "float16": "DT_HALF",
    "bfloat16": "DT_BFLOAT16",
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
    "int8": "DT_INT8",
    "int16": "DT_INT16",
    "int32": "DT_INT32",
    "int64": "DT_INT64",
    "uint8": "DT_UINT8",
    "uint16": "DT_UINT16",
    "uint32": "DT_UINT32",
    "uint64": "DT_UINT64",
    "bool": "DT_BOOL",
    "complex64": "DT_COMPLEX64",
    "complex128": "DT_COMPLEX128",
    STRING: "DT_STRING",
}
FROM_TF_DTYPES = {tf_name: name for name, tf_name in TF_DTYPES.items()}
