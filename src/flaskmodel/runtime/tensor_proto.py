"""numpy arrays to and from TensorFlow's ``TensorProto`` (the tensors of TF Serving's gRPC API).

Numbers travel as little-endian ``tensor_content`` (what TF Serving itself sends); on the way
back the typed ``*_val`` fields are read too, including the one-value form TF uses for a tensor
filled with a single value. Strings are ``string_val`` entries, decoded to object arrays of bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

from flaskmodel.codecs.tfserving_json import FROM_TF_DTYPES, STRING, TF_DTYPES
from flaskmodel.errors import InternalError, InvalidInput

# Which repeated field holds the values of a dtype when ``tensor_content`` is empty.
_VALUE_FIELDS = {
    "float16": "half_val",
    "float32": "float_val",
    "float64": "double_val",
    "int8": "int_val",
    "int16": "int_val",
    "int32": "int_val",
    "uint8": "int_val",
    "uint16": "int_val",
    "int64": "int64_val",
    "uint32": "uint32_val",
    "uint64": "uint64_val",
    "bool": "bool_val",
}


def to_tensor_proto(name: str, array: np.ndarray) -> Any:
    """The ``TensorProto`` of input ``name`` (numbers as raw bytes, strings as ``string_val``)."""
    proto = tensor_pb2.TensorProto()
    for size in array.shape:
        proto.tensor_shape.dim.add(size=int(size))
    if array.dtype.kind in "OSU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(_as_bytes(name, v) for v in array.reshape(-1).tolist())
        return proto
    tf_name = TF_DTYPES.get(array.dtype.name)
    if tf_name is None or array.dtype.name not in _VALUE_FIELDS:
        raise InvalidInput(f"input '{name}': dtype {array.dtype} cannot be sent to TF Serving")
    proto.dtype = types_pb2.DataType.Value(tf_name)
    proto.tensor_content = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
    return proto


def _as_bytes(name: str, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise InvalidInput(f"input '{name}': string tensor holds {type(value).__name__}")


def from_tensor_proto(name: str, proto: Any) -> np.ndarray:
    """The numpy array of output ``name``."""
    shape = [int(d.size) for d in proto.tensor_shape.dim]
    count = int(np.prod(shape)) if shape else 1
    dtype_name = FROM_TF_DTYPES.get(types_pb2.DataType.Name(proto.dtype))
    if dtype_name == STRING:
        values: np.ndarray = np.empty(len(proto.string_val), dtype=object)
        values[:] = list(proto.string_val)
    elif dtype_name in _VALUE_FIELDS:
        dtype = np.dtype(dtype_name)
        if proto.tensor_content:
            values = np.frombuffer(proto.tensor_content, dtype.newbyteorder("<")).astype(dtype)
        elif dtype_name == "float16":  # half_val holds the bit patterns as ints
            values = np.array(proto.half_val, np.uint16).view(np.float16)
        else:
            values = np.array(getattr(proto, _VALUE_FIELDS[dtype_name]), dtype)
    else:
        raise InternalError(
            f"TF Serving output '{name}' has unsupported dtype "
            f"{types_pb2.DataType.Name(proto.dtype)}"
        )
    if values.size == count:
        return values.reshape(shape)
    if values.size == 1:  # TF's compact form: one value repeated over the whole shape
        return np.full(shape, values[0], dtype=values.dtype)
    if values.size == 0:
        return np.full(shape, b"" if values.dtype == object else 0, dtype=values.dtype)
    raise InternalError(f"TF Serving output '{name}' has {values.size} values for shape {shape}")
