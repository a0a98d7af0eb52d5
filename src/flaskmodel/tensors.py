"""Tensor payloads in TF Serving's row and columnar JSON forms, checked against a signature.

Pure numpy, used by the web tier (to refuse bad input with 400 before queueing) and the worker
(to build the arrays it feeds the model).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from flaskmodel.errors import InvalidInput
from flaskmodel.schemas import ModelSpec, TensorSpec

logger = logging.getLogger(__name__)

_KINDS = {"f": "float", "i": "int", "u": "int", "b": "bool"}


def decode_inputs(inputs: list[Any] | dict[str, Any], spec: ModelSpec) -> dict[str, np.ndarray]:
    """Arrays keyed by input name from a row-format list or a columnar object."""
    names = [t.name for t in spec.inputs]
    if isinstance(inputs, dict):
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
        columns = {}
        for i, row in enumerate(inputs):
            if not isinstance(row, dict) or set(row) != set(names):
                raise InvalidInput(f"example {i}: model '{spec.name}' takes inputs {names}")
        for name in names:
            columns[name] = [row[name] for row in inputs]
    arrays = {t.name: _to_array(columns[t.name], t) for t in spec.inputs}
    batch = {a.shape[0] for a in arrays.values()}
    if len(batch) > 1:
        raise InvalidInput(f"inputs disagree on the batch size: {sorted(batch)}")
    return arrays


def _to_array(value: Any, spec: TensorSpec) -> np.ndarray:
    dtype = np.dtype(spec.dtype)
    try:
        array = np.asarray(value)
    except ValueError as exc:
        raise InvalidInput(f"input {spec.name!r} is not a rectangular tensor: {exc}") from exc
    if array.dtype == object or array.dtype.kind not in "fiub":
        raise InvalidInput(f"input {spec.name!r} must hold numbers of type {spec.dtype}")
    if dtype.kind in "iu" and array.dtype.kind == "f":
        raise InvalidInput(f"input {spec.name!r} must hold integers ({spec.dtype})")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"input {spec.name!r} holds NaN or infinity")
    if array.ndim != len(spec.shape):
        raise InvalidInput(
            f"input {spec.name!r} must have {len(spec.shape)} dimensions "
            f"(shape {_shape_text(spec.shape)}), got shape {list(array.shape)}"
        )
    for got, want in zip(array.shape, spec.shape, strict=True):
        if want is not None and got != want:
            raise InvalidInput(
                f"input {spec.name!r} must have shape {_shape_text(spec.shape)}, "
                f"got {list(array.shape)}"
            )
    if array.shape[0] == 0:
        raise InvalidInput(f"input {spec.name!r} has an empty batch")
    return array.astype(dtype, copy=False)


def _shape_text(shape: list[int | None]) -> str:
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"


def encode_outputs(outputs: dict[str, np.ndarray], *, row_format: bool) -> dict[str, Any]:
    """TF Serving's response body: ``predictions`` (row request) or ``outputs`` (columnar)."""
    lists = {name: value.tolist() for name, value in outputs.items()}
    if row_format:
        if len(lists) == 1:
            return {"predictions": next(iter(lists.values()))}
        batch = len(next(iter(lists.values())))
        return {"predictions": [{k: v[i] for k, v in lists.items()} for i in range(batch)]}
    if len(lists) == 1:
        return {"outputs": next(iter(lists.values()))}
    return {"outputs": lists}
