"""``FakeRuntime``: a deterministic stand-in model for tests and benchmarks of the layers above.

A fake model version is a folder ``<models_root>/<name>/<version>/`` holding ``fake.json``::

    {"inputs": [{"name": "x", "dtype": "float32", "shape": [null, 4]}],
     "outputs": [{"name": "y", "dtype": "float32", "shape": [null, 3]}],
     "delay_ms": 0, "fail_on": null, "crash_on": null, "load_delay_ms": 0,
     "hang_on": null, "hang_ms": 0}

Each output row is a softmax over a fixed projection of the flattened input rows, so results can
be checked exactly with ``FakeRuntime.expected``. ``fail_on`` (a float) makes any batch whose
first input contains that value raise, to test failure paths; ``crash_on`` makes the process
``SIGKILL`` itself instead (a model that takes its worker down every time), ``load_delay_ms``
makes ``load`` slow (a big model), and ``hang_on`` makes a batch holding that value block for
``hang_ms`` with every signal held back (native code that ignores a soft time limit), to test
crash, start-up and time-limit paths.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import numpy as np

from flaskmodel.errors import InternalError
from flaskmodel.schemas import ModelSpec, TensorSpec

logger = logging.getLogger(__name__)


class FakeRuntime:
    """Implements ``ModelRuntime`` with numpy alone."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        delay_ms: float = 0.0,
        fail_on: float | None = None,
        crash_on: float | None = None,
        load_delay_ms: float = 0.0,
        hang_on: float | None = None,
        hang_ms: float = 0.0,
    ) -> None:
        self._spec = spec
        self._delay = delay_ms / 1000.0
        self._fail_on = fail_on
        self._crash_on = crash_on
        self._load_delay = load_delay_ms / 1000.0
        self._hang_on = hang_on
        self._hang = hang_ms / 1000.0
        self.loaded = False

    @classmethod
    def from_dir(cls, name: str, version: int, path: Path) -> FakeRuntime:
        config = json.loads((path / "fake.json").read_text())
        spec = ModelSpec(
            name=name,
            version=version,
            inputs=[TensorSpec.model_validate(t) for t in config["inputs"]],
            outputs=[TensorSpec.model_validate(t) for t in config["outputs"]],
        )
        return cls(
            spec,
            delay_ms=config.get("delay_ms", 0.0),
            fail_on=config.get("fail_on"),
            crash_on=config.get("crash_on"),
            load_delay_ms=config.get("load_delay_ms", 0.0),
            hang_on=config.get("hang_on"),
            hang_ms=config.get("hang_ms", 0.0),
        )

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def load(self) -> None:
        if self._load_delay:
            time.sleep(self._load_delay)
        self.loaded = True

    def close(self) -> None:
        self.loaded = False

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.loaded:
            raise InternalError(f"model '{self._spec.name}' used before load()")
        first = inputs[self._spec.inputs[0].name]
        if self._fail_on is not None and bool(np.any(first == self._fail_on)):
            raise ValueError(f"fake model '{self._spec.name}' fails on {self._fail_on}")
        if self._crash_on is not None and bool(np.any(first == self._crash_on)):
            logger.warning("fake model %s kills its process on %s", self._spec.name, self._crash_on)
            os.kill(os.getpid(), signal.SIGKILL)
        if self._delay:
            time.sleep(self._delay)
        if self._hang_on is not None and bool(np.any(first == self._hang_on)):
            held = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
            try:
                time.sleep(self._hang)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
        return self.expected(self._spec, inputs)

    @staticmethod
    def expected(spec: ModelSpec, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs the fake computes for ``inputs`` (what tests compare against)."""
        flat = np.concatenate(
            [
                inputs[t.name].reshape(len(inputs[t.name]), -1).astype(np.float64)
                for t in spec.inputs
            ],
            axis=1,
        )
        outputs = {}
        for index, out in enumerate(spec.outputs):
            width = int(np.prod([d or 1 for d in out.shape[1:]]))
            weights = np.cos(np.arange(flat.shape[1] * width).reshape(flat.shape[1], width) + index)
            logits = flat @ weights
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(axis=1, keepdims=True)
            shape = [len(flat), *[d or 1 for d in out.shape[1:]]]
            outputs[out.name] = probs.reshape(shape).astype(out.dtype)
        return outputs
