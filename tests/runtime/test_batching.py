"""The pure batching rules: batch size, signature key, batch planning, merge and split."""

from __future__ import annotations

import numpy as np
import pytest

from flaskmodel.errors import InternalError, InvalidInput
from flaskmodel.runtime.batching import (
    batch_key,
    batch_rows,
    merge_inputs,
    plan_batch,
    split_outputs,
)


def test_batch_rows_needs_a_shared_first_dimension() -> None:
    assert batch_rows({"a": np.zeros((3, 2)), "b": np.zeros(3)}) == 3
    with pytest.raises(InvalidInput, match="share a batch dimension"):
        batch_rows({"a": np.zeros((3, 2)), "b": np.zeros(2)})
    with pytest.raises(InvalidInput):
        batch_rows({"a": np.float32(1.0).reshape(())})
    with pytest.raises(InvalidInput):
        batch_rows({})


def test_batch_key_ignores_the_batch_dimension_only() -> None:
    one = {"x": np.zeros((1, 4), np.float32)}
    five = {"x": np.zeros((5, 4), np.float32)}
    wider = {"x": np.zeros((1, 5), np.float32)}
    doubles = {"x": np.zeros((1, 4), np.float64)}
    assert batch_key(one) == batch_key(five)
    assert batch_key(one) != batch_key(wider)
    assert batch_key(one) != batch_key(doubles)
    assert batch_key({"a": one["x"], "b": one["x"]}) == batch_key({"b": five["x"], "a": five["x"]})


def test_plan_batch_follows_the_oldest_call() -> None:
    a, b = (("a",),), (("b",),)  # two stand-in signature keys
    # Same key calls join in order until the size is reached; other keys wait.
    assert plan_batch([(a, 2), (b, 1), (a, 3)], 8) == ([0, 2], False)
    assert plan_batch([(a, 2), (a, 3), (a, 3)], 8) == ([0, 1, 2], True)
    # The first call that does not fit closes the batch (order kept within a key).
    assert plan_batch([(a, 5), (a, 4), (a, 1)], 8) == ([0], True)
    # A call bigger than the limit goes alone.
    assert plan_batch([(a, 20), (a, 1)], 8) == ([0], True)
    assert plan_batch([], 8) == ([], False)


def test_merge_then_split_gives_each_caller_its_rows() -> None:
    calls = [
        {"x": np.arange(2 * 3).reshape(2, 3), "s": np.array([b"a", b"b"], dtype=object)},
        {"x": np.arange(1 * 3).reshape(1, 3) + 100, "s": np.array([b"c"], dtype=object)},
        {"x": np.arange(3 * 3).reshape(3, 3) + 200, "s": np.array([b"d", b"e", b"f"], object)},
    ]
    merged = merge_inputs(calls)
    assert merged["x"].shape == (6, 3) and list(merged["s"]) == [b"a", b"b", b"c", b"d", b"e", b"f"]
    outputs = {"y": merged["x"] * 2, "s": merged["s"]}
    parts = split_outputs(outputs, [2, 1, 3])
    for call, part in zip(calls, parts, strict=True):
        np.testing.assert_array_equal(part["y"], call["x"] * 2)
        assert list(part["s"]) == list(call["s"])
    assert merge_inputs(calls[:1]) is calls[0]


def test_split_refuses_outputs_without_the_batch_dimension() -> None:
    with pytest.raises(InternalError, match="batch dimension"):
        split_outputs({"total": np.zeros(())}, [1, 2])
    with pytest.raises(InternalError):
        split_outputs({"y": np.zeros((4, 2))}, [1, 2])
