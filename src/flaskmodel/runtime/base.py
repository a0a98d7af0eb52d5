"""The ``ModelRuntime`` protocol every backend implements."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from flaskmodel.codecs.tfserving_json import numpy_dtype
from flaskmodel.schemas import ModelSpec


class ModelRuntime(Protocol):
    """One loaded model version. ``load`` before ``predict``; ``close`` frees it."""

    @property
    def spec(self) -> ModelSpec: ...

    def load(self) -> None: ...

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class RemoteClient(Protocol):
    """A connection to a model server (TF Serving over gRPC or REST) shared by its models."""

    def versions(self, name: str) -> list[int]: ...

    def runtime(self, name: str, version: int) -> ModelRuntime: ...

    def close(self) -> None: ...


def warm_up(runtime: ModelRuntime, batch: int = 1) -> None:
    """Call the model once on zeros (``batch`` examples) so the first real request of that
    batch size pays no tracing or first-call cost."""
    inputs = {}
    for t in runtime.spec.inputs:
        shape = [batch, *[d if d is not None else 1 for d in t.shape[1:]]]
        dtype = numpy_dtype(t.dtype)
        inputs[t.name] = (
            np.full(shape, b"", dtype=object) if dtype.kind == "O" else np.zeros(shape, dtype)
        )
    runtime.predict(inputs)
