"""Row and columnar tensor payloads against a signature."""

from __future__ import annotations

import numpy as np
import pytest

from flaskmodel.codecs.tfserving_json import (
    decode_inputs,
    decode_outputs,
    encode_columnar,
    encode_outputs,
)
from flaskmodel.errors import InvalidInput
from flaskmodel.schemas import ModelSpec, TensorSpec

ONE = ModelSpec(
    name="m",
    version=1,
    inputs=[TensorSpec(name="x", dtype="float32", shape=[None, 2])],
    outputs=[TensorSpec(name="y", dtype="float32", shape=[None, 1])],
)
TWO = ModelSpec(
    name="m2",
    version=1,
    inputs=[
        TensorSpec(name="a", dtype="float32", shape=[None, 2]),
        TensorSpec(name="b", dtype="int64", shape=[None]),
    ],
    outputs=[],
)


def test_row_and_columnar_single_input() -> None:
    rows = decode_inputs([[1, 2], [3, 4]], ONE)
    cols = decode_inputs({"x": [[1, 2], [3, 4]]}, ONE)
    for arrays in (rows, cols):
        assert arrays["x"].dtype == np.float32
        np.testing.assert_array_equal(arrays["x"], [[1, 2], [3, 4]])


def test_row_format_with_named_inputs() -> None:
    arrays = decode_inputs([{"a": [1, 2], "b": 3}, {"a": [3, 4], "b": 5}], TWO)
    assert arrays["b"].dtype == np.int64
    np.testing.assert_array_equal(arrays["b"], [3, 5])


@pytest.mark.parametrize(
    ("payload", "spec", "needle"),
    [
        ([[1, 2, 3]], ONE, "shape"),
        ([1, 2], ONE, "dimensions"),
        ([[1, 2], [3]], ONE, "rectangular"),
        ([["a", "b"]], ONE, "numbers"),
        ({"z": [[1, 2]]}, ONE, "'x'"),
        ([{"a": [1, 2]}], TWO, "takes inputs"),
        ({"a": [[1, 2]], "b": [1, 2]}, TWO, "batch"),
        ({"a": [[1, 2]], "b": [1.5]}, TWO, "integers"),
        ([[float("inf"), 1]], ONE, "infinity"),
    ],
)
def test_bad_payloads(payload: object, spec: ModelSpec, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        decode_inputs(payload, spec)  # type: ignore[arg-type]


def test_encode_outputs() -> None:
    y = {"y": np.array([[1.0], [2.0]])}
    assert encode_outputs(y, row_format=True) == {"predictions": [[1.0], [2.0]]}
    assert encode_outputs(y, row_format=False) == {"outputs": [[1.0], [2.0]]}
    two = {"p": np.array([1, 2]), "q": np.array([3, 4])}
    assert encode_outputs(two, row_format=True) == {
        "predictions": [{"p": 1, "q": 3}, {"p": 2, "q": 4}]
    }
    assert encode_outputs(two, row_format=False) == {"outputs": {"p": [1, 2], "q": [3, 4]}}


TEXT = ModelSpec(
    name="t",
    version=1,
    inputs=[TensorSpec(name="s", dtype="string", shape=[None])],
    outputs=[
        TensorSpec(name="s_bytes", dtype="string", shape=[None]),
        TensorSpec(name="n", dtype="int32", shape=[None]),
    ],
)


def test_strings_and_b64() -> None:
    arrays = decode_inputs(["plain", {"b64": "AP8="}], TEXT)
    assert arrays["s"].dtype == object and arrays["s"].tolist() == [b"plain", b"\x00\xff"]
    with pytest.raises(InvalidInput, match="base64"):
        decode_inputs([{"b64": "***"}], TEXT)
    with pytest.raises(InvalidInput, match="strings"):
        decode_inputs([1.5], TEXT)
    with pytest.raises(InvalidInput, match="numbers"):
        decode_inputs([[{"b64": "AA=="}]], ONE)  # numbers cannot be b64
    body = encode_outputs(
        {"s_bytes": arrays["s"], "n": np.array([5, 2], np.int32)}, row_format=True
    )
    assert body == {
        "predictions": [
            {"s_bytes": {"b64": "cGxhaW4="}, "n": 5},
            {"s_bytes": {"b64": "AP8="}, "n": 2},
        ]
    }
    # Not ending in _bytes: text when it is UTF-8, b64 when it cannot be.
    plain = encode_outputs({"s": arrays["s"]}, row_format=False)
    assert plain == {"outputs": ["plain", {"b64": "AP8="}]}


def test_explicit_formats_and_output_decoding() -> None:
    rows = decode_inputs([{"x": [1, 2]}, {"x": [3, 4]}], ONE, row_format=True)
    assert rows["x"].tolist() == [[1, 2], [3, 4]]
    with pytest.raises(InvalidInput, match="non-empty list"):
        decode_inputs({"x": [[1, 2]]}, ONE, row_format=True)
    columns = decode_inputs([[1, 2]], ONE, row_format=False)
    assert columns["x"].shape == (1, 2)
    outputs = decode_outputs({"s_bytes": [{"b64": "AP8="}], "n": [3]}, TEXT)
    assert outputs["s_bytes"].tolist() == [b"\x00\xff"] and outputs["n"].dtype == np.int32
    assert decode_outputs([[0.5]], ONE)["y"].tolist() == [[0.5]]
    assert encode_columnar({"s": np.array([b"a"], dtype=object)}) == {"s": [{"b64": "YQ=="}]}


def test_numbers_out_of_range_for_the_dtype_are_refused() -> None:
    with pytest.raises(InvalidInput, match="too large for float32"):
        decode_inputs([[1e39, 0.0]], ONE)
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(InvalidInput, match="NaN or infinity"):
            decode_inputs([[bad, 1e39]], ONE)
    flags = ModelSpec(
        name="b", version=1, inputs=[TensorSpec(name="f", dtype="bool", shape=[None])], outputs=[]
    )
    with pytest.raises(InvalidInput, match="NaN or infinity"):
        decode_inputs([0.0, float("nan")], flags)
    small = ModelSpec(
        name="s", version=1,
        inputs=[TensorSpec(name="i", dtype="int8", shape=[None])],
        outputs=[],
    )  # fmt: skip
    with pytest.raises(InvalidInput, match="out of range for int8"):
        decode_inputs([1, 300], small)
    assert decode_inputs([1, -128], small)["i"].dtype == np.int8
