"""The fast path for big float tensors in JSON text: the same arrays and the same 400s as the
general path (the whole body parsed into Python objects), or no answer at all."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from flaskmodel.codecs import fast_json
from flaskmodel.codecs.fast_json import FlatTensor, has_long_int, lift_tensor
from flaskmodel.codecs.tfserving_json import decode_inputs
from flaskmodel.errors import FlaskModelError
from flaskmodel.schemas import ModelSpec, TensorSpec
from flaskmodel.web.body import parse_json

KEYS = ("instances", "inputs")


def model(dtype: str = "float32", *shapes: list[int | None]) -> ModelSpec:
    inputs = [TensorSpec(name=f"x{i}", dtype=dtype, shape=s) for i, s in enumerate(shapes)]
    return ModelSpec(name="m", version=1, inputs=inputs, outputs=[])


CT = model("float32", [None, 4, 3, 1])
ROWS = model("float32", [None, 2])


def general(raw: bytes, spec: ModelSpec) -> dict[str, np.ndarray] | str:
    """What the web tier did before: the standard library's parse, then ``decode_inputs``."""
    try:
        body = json.loads(raw)
        key = "instances" if "instances" in body else "inputs"
        return decode_inputs(body[key], spec, row_format=key == "instances")
    except FlaskModelError as exc:
        return str(exc)


def fast(raw: bytes, spec: ModelSpec) -> dict[str, np.ndarray] | str:
    """What the web tier does now (``body.tensor_body`` and ``predict_v1``)."""
    try:
        body = lift_tensor(raw, spec, KEYS)
        if body is None:
            body = parse_json(raw)
        key = "instances" if "instances" in body else "inputs"
        return decode_inputs(body[key], spec, row_format=key == "instances")
    except FlaskModelError as exc:
        return str(exc)


def assert_same(raw: bytes, spec: ModelSpec) -> dict[str, np.ndarray] | str:
    want, got = general(raw, spec), fast(raw, spec)
    if isinstance(want, str) or isinstance(got, str):
        assert got == want
        return got
    assert want.keys() == got.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype
        assert got[name].shape == want[name].shape
        np.testing.assert_array_equal(got[name], want[name])
    return got


def lifted(raw: bytes, spec: ModelSpec) -> bool:
    body = lift_tensor(raw, spec, KEYS)
    return body is not None and any(isinstance(v, FlatTensor) for v in body.values())


def random_values(rng: np.random.Generator, shape: tuple[int, ...]) -> list[Any]:
    """float32 values with negatives, exponents both ways, zeros, and whole numbers as ints."""
    values = rng.standard_normal(shape).astype(np.float32)
    values *= (10.0 ** rng.integers(-12, 12, shape)).astype(np.float32)
    flat = values.reshape(-1)
    flat[rng.random(flat.size) < 0.1] = 0.0
    flat[rng.random(flat.size) < 0.05] = -0.0
    nested: list[Any] = values.tolist()

    def ints(node: Any) -> Any:
        if isinstance(node, list):
            return [ints(child) for child in node]
        return int(node) if rng.random() < 0.1 and abs(node) < 1e15 else node

    return ints(nested)  # type: ignore[no-any-return]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("separators", [None, (",", ":"), (" , ", " : ")])
def test_random_float32_tensors_decode_exactly_as_before(
    seed: int, separators: tuple[str, str] | None
) -> None:
    rng = np.random.default_rng(seed)
    batch = int(rng.integers(1, 4))
    document = {
        "signature_name": "serving_default",
        "instances": random_values(rng, (batch, 4, 3, 1)),
    }
    raw = json.dumps(document, separators=separators).encode()
    assert lifted(raw, CT)
    arrays = assert_same(raw, CT)
    assert not isinstance(arrays, str) and arrays["x0"].shape == (batch, 4, 3, 1)


def test_long_float_texts_and_exponent_forms() -> None:
    raw = (
        b'{"instances": [[0.1000000000000000055511151231257827, -1E+2], '
        b"[1.0e-45, 3.4028234663852886e18], [-0, -0.0], [2e0, 123456789012345678]]}"
    )
    assert lifted(raw, ROWS)
    assert_same(raw, ROWS)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_every_float_dtype_and_columnar_inputs(dtype: str) -> None:
    spec = model(dtype, [None, 3])
    for raw in (
        b'{"inputs": [[1.5, 2, -3e-3]], "signature_name": ""}',
        b'{\n  "instances": [\n    [1.5, 2, -3e-3],\n    [4, 5, 6]\n  ]\n}\n',
        b'{"instances": [[1, 2, 3]]}',  # all integers: int64 first, as numpy made it before
    ):
        assert lifted(raw, spec)
        assert_same(raw, spec)


def test_rank_one_input() -> None:
    spec = model("float32", [None])
    raw = b'{"instances": [0.5, 1, -2.25e10]}'
    assert lifted(raw, spec)
    assert_same(raw, spec)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b'{"instances": [[1, 2], [3]]}', "rectangular"),  # ragged
        (b'{"instances": [[1, 2], [3, 4, 5]]}', "rectangular"),
        (b'{"instances": []}', "non-empty"),
        (b'{"instances": [[]]}', "shape"),
        (b'{"instances": [["a", "b"]]}', "numbers"),
        (b'{"instances": [[null, 1]]}', "numbers"),
        (b'{"instances": [[true, 1]]}', None),  # taken (as numbers) before and now
        (b'{"instances": [{"x0": [1, 2]}]}', None),  # keyed rows
        (b'{"instances": [{"y": [1, 2]}]}', "takes inputs"),
        (b'{"instances": [[{"b64": "AAAA"}, 1]]}', "numbers"),
        (b'{"instances": [[1, 2, 3]]}', "shape"),  # wrong inner size
        (b'{"instances": [[1, 2, 3, 4]]}', "shape"),  # count fits, shape does not
        (b'{"instances": [1, 2]}', "dimensions"),
        (b'{"instances": [[[1, 2]]]}', "dimensions"),
        (b'{"instances": [[1e300, 1]]}', "too large"),
        (b'{"instances": [[1e400, 1]]}', "infinity"),  # the json module reads it as infinity
        (b'{"instances": [[123456789012345678901234567890, 1]]}', "numbers"),
        (b'{"instances": [[-9223372036854775809, 1]]}', "numbers"),
    ],
)
def test_unusual_tensors_answer_as_before(raw: bytes, needle: str | None) -> None:
    answer = assert_same(raw, ROWS)
    assert needle is None or (isinstance(answer, str) and needle in answer), answer
    assert not lifted(raw, ROWS)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b'{"instances": [[NaN, 1]]}', "NaN is not a valid JSON number"),
        (b'{"instances": [[Infinity, 1]]}', "Infinity is not a valid JSON number"),
        (b'{"instances": [[1, 2]5, [3, 4]]}', "Expecting ',' delimiter"),
        (b'{"instances": [1[, 2], [3, 4]]}', "Expecting ',' delimiter"),
        (b'{"instances": [[1 2], [3, 4]]}', "Expecting ',' delimiter"),
        (b'{"instances": [[1, ], [3, 4]]}', "Expecting value"),
        (b'{"instances": [[+1, 2]]}', "Expecting value"),
        (b'{"instances": [[1, 2]]', "Expecting ',' delimiter"),
        (b'{"instances": [[1, 2]]}}', "Extra data"),
        (b'{"instances": [[1, 2]] "x": 1}', "Expecting ',' delimiter"),
        (b'{"instances": ' + b"[" * 3000 + b"]" * 3000 + b"}", "nested too deeply"),
        (b'{"x": "\xff", "instances": [[1, 2]]}', "not UTF-8"),
    ],
)
def test_malformed_json_gets_the_same_400(raw: bytes, needle: str) -> None:
    assert lift_tensor(raw, ROWS, KEYS) is None
    answer = fast(raw, ROWS)
    assert isinstance(answer, str) and answer.startswith("malformed JSON body: "), answer
    assert needle in answer, answer


COLUMN = model("float32", [None, 1])


@pytest.mark.parametrize(
    "raw",
    [
        b'{"instances": [[], [1]]}',  # the skeleton of two one-number rows, one number
        b'{"instances": [[1], [18446744073709551615]]}',  # fits uint64, not int64
        b'{"instances": [[1e-400], [-0], [5e-324]]}',  # underflow, negative zero, subnormal
    ],
)
def test_one_number_rows_answer_as_before(raw: bytes) -> None:
    assert_same(raw, COLUMN)


@pytest.mark.parametrize(
    "raw",
    [b'{"instances": [[]1, [2]]}', b'{"instances": [[1], [2]3]}', b'{"instances": [[1],, [2]]}'],
)
def test_numbers_off_their_leaves_are_refused(raw: bytes) -> None:
    assert lift_tensor(raw, COLUMN, KEYS) is None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"note": "\\"instances\\": [[1, 2]]", "instances": [[3, 4]]}',
        b'{"a\\"instances": [[1, 2]], "instances": [[3, 4]]}',
        b'{"x": {"instances": [[1, 2]]}, "instances": [[3, 4]]}',
        b'{"instances": [[1, 2]], "instances": [[3, 4]]}',  # the last one counts, as ever
        b'{"instances": [[1, 2]], "signature_name": "serving_default", "more": [1, "]"]}',
        b'{"\\u0069nstances": [[3, 4]]}',
        b'[{"instances": [[1, 2]]}]',
    ],
)
def test_keys_in_strings_nested_or_repeated_take_the_right_value(raw: bytes) -> None:
    want = json.loads(raw)
    body = lift_tensor(raw, ROWS, KEYS)
    if b'"instances": [[1, 2]], "signature_name"' in raw or raw.startswith(b'{"note"'):
        assert body is not None  # the plain cases are taken
    if body is not None:
        assert isinstance(want, dict)
        assert body.keys() == want.keys()
        flat = body["instances"]
        assert isinstance(flat, FlatTensor)
        np.testing.assert_array_equal(flat.array(), want["instances"])
        assert {k: v for k, v in body.items() if k != "instances"} == {
            k: v for k, v in want.items() if k != "instances"
        }


@pytest.mark.parametrize(
    "spec",
    [
        model("float32", [None, None]),  # unknown inner dimension
        model("float32", [None, 2], [None, 2]),  # two inputs
        model("int64", [None, 2]),
        model("string", [None, 2]),
        model("float32", []),
    ],
)
def test_other_signatures_take_the_general_path(spec: ModelSpec) -> None:
    raw = b'{"instances": [[1.5, 2.5], [3.5, 4.5]]}'
    assert lift_tensor(raw, spec, KEYS) is None
    assert_same(raw, spec)


def test_a_fixed_batch_size_is_checked_as_before() -> None:
    spec = model("float32", [1, 2])
    assert lifted(b'{"instances": [[1, 2], [3, 4]]}', spec)
    answer = assert_same(b'{"instances": [[1, 2], [3, 4]]}', spec)
    assert isinstance(answer, str) and "shape" in answer


def test_long_integers_are_found() -> None:
    assert has_long_int(b"[1234567890123456789]")
    assert has_long_int(b"1234567890123456789")
    assert has_long_int(b'{"ttl": -9223372036854775809}')
    assert not has_long_int(b"[0.0012345678901234567890, 123456789012345678]")
    assert not has_long_int(b'{"uid": "2.25.329800735698586629295641978511506172918"}')


def test_the_kept_parser_reads_body_after_body(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bodies read one after another by the one kept parser: an earlier tensor keeps its numbers
    while the parser reads the next (they are copied out), a body the parser refuses leaves it
    fit for the next one, and a parser that read a span over the bound is not kept."""
    rng = np.random.default_rng(7)
    bodies = [{"instances": random_values(rng, (2, 4, 3, 1))} for _ in range(3)]
    raws = [json.dumps(body).encode() for body in bodies]
    first = lift_tensor(raws[0], CT, KEYS)
    assert first is not None
    assert len(fast_json._PARSERS) == 1
    kept = fast_json._PARSERS[0]
    assert lift_tensor(b'{"instances": [[1], [2]3]}', COLUMN, KEYS) is None  # refused by it
    assert lifted(raws[1], CT)
    assert len(fast_json._PARSERS) == 1 and fast_json._PARSERS[0] is kept  # no other kept
    np.testing.assert_array_equal(
        first["instances"].array(), np.array(bodies[0]["instances"], dtype=np.float64)
    )
    monkeypatch.setattr(fast_json, "KEEP_PARSER_BYTES", len(raws[2]) // 2)
    assert lifted(raws[2], CT)
    assert fast_json._PARSERS == []
    assert_same(raws[2], CT)
