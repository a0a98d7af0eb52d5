"""V2 tensor decoding and encoding rules that the HTTP tests do not reach."""

from __future__ import annotations

import numpy as np
import pytest

from flaskmodel.codecs.v2 import (
    InferRequest,
    classify,
    decode_inputs,
    encode_outputs,
    split_body,
    v2_datatype,
)
from flaskmodel.errors import InvalidInput
from flaskmodel.schemas import ModelSpec, TensorSpec

SPEC = ModelSpec(
    name="m",
    version=1,
    inputs=[
        TensorSpec(name="b", dtype="bool", shape=[None, 2]),
        TensorSpec(name="u", dtype="uint8", shape=[None]),
    ],
    outputs=[TensorSpec(name="y", dtype="float32", shape=[None, 3])],
)


def request(**inputs: dict[str, object]) -> InferRequest:
    return InferRequest.model_validate({"inputs": [{"name": k, **v} for k, v in inputs.items()]})


def test_split_body() -> None:
    assert split_body(b'{"a": 1}', None) == (b'{"a": 1}', b"")
    assert split_body(b'{"a": 1}xyz', "8") == (b'{"a": 1}', b"xyz")
    for bad in ("x", "0", "99"):
        with pytest.raises(InvalidInput):
            split_body(b"{}", bad)


def test_binary_bool_and_range_checks() -> None:
    req = request(
        b={"shape": [1, 2], "datatype": "BOOL", "parameters": {"binary_data_size": 2}},
        u={"shape": [1], "datatype": "UINT8", "data": [255]},
    )
    arrays = decode_inputs(req, b"\x00\x05", SPEC)
    assert arrays["b"].tolist() == [[False, True]] and arrays["u"].tolist() == [255]
    overflow = request(
        b={"shape": [1, 2], "datatype": "BOOL", "data": [True, False]},
        u={"shape": [1], "datatype": "UINT8", "data": [256]},
    )
    with pytest.raises(InvalidInput, match="outside UINT8"):
        decode_inputs(overflow, b"", SPEC)
    numbers_as_bools = request(
        b={"shape": [1, 2], "datatype": "BOOL", "data": [1, 0]},
        u={"shape": [1], "datatype": "UINT8", "data": [1]},
    )
    with pytest.raises(InvalidInput, match="BOOL values"):
        decode_inputs(numbers_as_bools, b"", SPEC)
    floats_as_ints = request(
        b={"shape": [1, 2], "datatype": "BOOL", "data": [True, True]},
        u={"shape": [1], "datatype": "UINT8", "data": [1.5]},
    )
    with pytest.raises(InvalidInput, match="UINT8 values"):
        decode_inputs(floats_as_ints, b"", SPEC)


def test_classification_strings() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], np.float32)
    out = classify(scores, 2, ["a", "b", "c"])
    assert out.tolist() == [[b"0.700000:1:b", b"0.200000:2:c"], [b"0.500000:0:a", b"0.250000:1:b"]]
    assert classify(scores[:1], 5, None).tolist() == [[b"0.700000:1", b"0.200000:2", b"0.100000:0"]]


def test_output_encoding_and_datatypes() -> None:
    req = InferRequest.model_validate(
        {"inputs": [{"name": "u", "shape": [1], "datatype": "UINT8", "data": [1]}]}
    )
    entries, blobs = encode_outputs(req, SPEC, {"y": np.ones((1, 3), np.float32)}, None)
    assert entries == [{"name": "y", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 1.0, 1.0]}]
    assert blobs == []
    assert [v2_datatype(d) for d in ("float16", "int64", "bool", "string", "object")] == [
        "FP16",
        "INT64",
        "BOOL",
        "BYTES",
        "BYTES",
    ]
    with pytest.raises(InvalidInput):
        v2_datatype("complex64")


def test_fp32_values_beyond_float32_are_refused() -> None:
    spec = ModelSpec(
        name="f", version=1,
        inputs=[TensorSpec(name="x", dtype="float32", shape=[None])],
        outputs=[],
    )  # fmt: skip
    huge = request(x={"shape": [2], "datatype": "FP32", "data": [1.0, 1e39]})
    with pytest.raises(InvalidInput, match="outside FP32"):
        decode_inputs(huge, b"", spec)
    fine = request(x={"shape": [2], "datatype": "FP32", "data": [1.0, 3e38]})
    assert decode_inputs(fine, b"", spec)["x"].dtype == np.float32
    for bad in (float("nan"), float("inf"), -float("inf")):
        given = request(x={"shape": [2], "datatype": "FP32", "data": [1.0, bad]})
        with pytest.raises(InvalidInput, match="NaN or infinity"):
            decode_inputs(given, b"", spec)
