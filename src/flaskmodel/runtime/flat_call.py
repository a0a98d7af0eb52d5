"""``FlatCall``: a SavedModel signature called without its Python argument binding.

Calling a loaded signature with keyword tensors binds them to its input signature in Python
first (about 70-90 µs a call on the benchmark's 2-core hosts, a fifth of a small model's whole
call at batch 1). The signature's own ``_call_flat`` takes the tensors already in order. It is
private to TensorFlow, so it is used only where it proves itself when the model loads: a trial
call on made-up inputs must answer what the public call answers, else (an older or newer
TensorFlow, an input it cannot make up) the public call is used. Inputs whose dtype or shape the
signature would not accept always go the public way, which raises the signature's own error.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Each input's name, numpy dtype and shape (None: any size), in the signature's flat order.
Inputs = list[tuple[str, np.dtype[Any], tuple[int | None, ...]]]


class FlatCall:
    """Calls ``fn`` (a loaded signature) with its inputs in flat order, when they fit."""

    def __init__(self, fn: Any, inputs: Inputs) -> None:
        self._fn = fn
        self._inputs = inputs
        self._captured = fn.captured_inputs

    @classmethod
    def probe(cls, tf: Any, fn: Any, name: str) -> FlatCall | None:
        """A ``FlatCall`` of ``fn`` if a trial call of it matches the public call, else None."""
        try:
            _, kwargs = fn.structured_input_signature
            inputs: Inputs = [
                (key, np.dtype(spec.dtype.as_numpy_dtype), tuple(spec.shape.as_list()))
                for key, spec in sorted(kwargs.items())  # the flat order of a dict: its keys'
            ]
            flat = cls(fn, inputs)
            trial = {key: _made_up(dtype, shape) for key, dtype, shape in inputs}
            expected = fn(**{key: tf.constant(value) for key, value in trial.items()})
            got = flat(tf, trial)
            same = got is not None and set(got) == set(expected)
            for key in expected if same else ():
                same = same and _equal(got[key].numpy(), expected[key].numpy())
        except Exception as exc:  # noqa: BLE001 - any failure: the public call, as before
            logger.info("model %s: signature called the public way (%s)", name, exc)
            return None
        if not same:
            logger.info("model %s: signature called the public way (trial answers differ)", name)
            return None
        return flat

    def __call__(self, tf: Any, inputs: dict[str, np.ndarray]) -> Any:
        """The signature's outputs for ``inputs``, or None when they are not exactly the
        signature's inputs with its dtypes and compatible shapes (call it the public way)."""
        if len(inputs) != len(self._inputs):
            return None
        args = []
        for key, dtype, shape in self._inputs:
            value = inputs.get(key)
            if value is None or value.dtype != dtype or not _fits(value.shape, shape):
                return None
            args.append(tf.constant(value))
        return self._fn._call_flat(args, self._captured)  # private: see the module docstring


def _fits(got: tuple[int, ...], shape: tuple[int | None, ...]) -> bool:
    return len(got) == len(shape) and all(
        want is None or want == size for size, want in zip(got, shape, strict=True)
    )


def _made_up(dtype: np.dtype[Any], shape: tuple[int | None, ...]) -> np.ndarray:
    """One example of an input (every unknown size 1): random numbers, zeros or ``b"x"``
    strings."""
    dims = tuple(size or 1 for size in shape)
    if dtype.kind == "f":
        return np.random.default_rng(7).random(dims).astype(dtype)
    if dtype.kind == "O":
        return np.full(dims, b"x", dtype=object)
    return np.zeros(dims, dtype=dtype)


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc":
        return bool(np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True))
    return bool(np.array_equal(a, b))
