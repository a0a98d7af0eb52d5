"""``FlatCall``: real SavedModels called without the signature's Python argument binding answer
what the public call answers, and what does not fit goes the public way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flaskmodel.errors import InvalidInput
from flaskmodel.runtime.flat_call import FlatCall
from flaskmodel.runtime.savedmodel import SavedModelRuntime


def _load(models_root: Path, name: str) -> tuple[Any, SavedModelRuntime]:
    import tensorflow as tf  # noqa: PLC0415

    runtime = SavedModelRuntime(name, 1, models_root / name / "1")
    runtime.load()
    return tf, runtime


def _public(tf: Any, runtime: SavedModelRuntime, inputs: dict[str, np.ndarray]) -> Any:
    fn = tf.saved_model.load(str(runtime._path)).signatures["serving_default"]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


@pytest.mark.parametrize("name", ["tiny", "ct_classifier", "echo"])
def test_the_flat_call_answers_what_the_signature_answers(models_root: Path, name: str) -> None:
    tf, runtime = _load(models_root, name)
    fn = tf.saved_model.load(str(models_root / name / "1")).signatures["serving_default"]
    flat = FlatCall.probe(tf, fn, name)
    assert flat is not None  # this TensorFlow has it and it passed its trial
    rng = np.random.default_rng(3)
    if name == "echo":  # a string input beside a float one, in the flat order of their names
        inputs = {
            "text": np.array([b"ab", b"", b"xyz"], dtype=object),
            "scale": rng.random((3, 2)).astype(np.float32),
        }
    else:
        shape = [5 if size is None else size for size in runtime.spec.inputs[0].shape]
        inputs = {runtime.spec.inputs[0].name: rng.random(shape).astype(np.float32)}
    expected = _public(tf, runtime, inputs)
    for got in (runtime.predict(inputs), {k: v.numpy() for k, v in flat(tf, inputs).items()}):
        assert set(got) == set(expected)
        for key, value in expected.items():
            assert got[key].dtype == value.dtype
            np.testing.assert_array_equal(got[key], value)
    runtime.close()


def test_inputs_that_do_not_fit_go_the_public_way(models_root: Path) -> None:
    tf, runtime = _load(models_root, "echo")
    fn = tf.saved_model.load(str(models_root / "echo" / "1")).signatures["serving_default"]
    flat = FlatCall.probe(tf, fn, "echo")
    assert flat is not None
    text = np.array([b"a"], dtype=object)
    for inputs in (
        {"text": text, "scale": np.ones((1, 2), np.float64)},  # another dtype
        {"text": text, "scale": np.ones((1, 3), np.float32)},  # another shape
        {"text": text},  # an input missing
        {"text": text, "scale": np.ones((1, 2), np.float32), "more": text},  # one too many
    ):
        assert flat(tf, inputs) is None
    # The public call then answers as it always did: the signature's own error, a 400.
    with pytest.raises(InvalidInput, match="expected to be a float tensor but is a double"):
        runtime.predict({"text": text, "scale": np.ones((1, 2), np.float64)})
    runtime.close()


class _WithoutFlatCall:
    """A loaded signature as a TensorFlow without ``_call_flat`` would have it."""

    def __init__(self, fn: Any) -> None:
        self._fn = fn
        self.structured_input_signature = fn.structured_input_signature
        self.captured_inputs = fn.captured_inputs

    def __call__(self, **kwargs: Any) -> Any:
        return self._fn(**kwargs)


class _AnswersOtherwise(_WithoutFlatCall):
    """A signature whose flat call answers something else than its public call."""

    def _call_flat(self, args: list[Any], captured: list[Any]) -> Any:
        return {k: v + 1 for k, v in self._fn._call_flat(args, captured).items()}


def test_a_flat_call_that_fails_its_trial_is_not_used(models_root: Path) -> None:
    tf, runtime = _load(models_root, "tiny")
    fn = tf.saved_model.load(str(models_root / "tiny" / "1")).signatures["serving_default"]
    assert FlatCall.probe(tf, _WithoutFlatCall(fn), "tiny") is None
    assert FlatCall.probe(tf, _AnswersOtherwise(fn), "tiny") is None
    runtime.close()
