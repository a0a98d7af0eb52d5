"""``RemoteRuntime``: one model version served by a TensorFlow Serving (gRPC or REST client).

Both clients (``tfserving_grpc.TfServingGrpcClient``, ``tfserving_rest.TfServingRestClient``)
answer ``metadata`` (the version's ``serving_default`` signature as a ``ModelSpec``) and
``predict``; this wraps one model version of either as a ``ModelRuntime``.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from flaskmodel.errors import ModelNotFound
from flaskmodel.schemas import ModelSpec

logger = logging.getLogger(__name__)


class ModelServer(Protocol):
    """What a TF Serving client offers one model version."""

    @property
    def target(self) -> str: ...

    @property
    def protocol(self) -> str: ...

    def metadata(self, name: str, version: int) -> ModelSpec: ...

    def predict(self, spec: ModelSpec, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class RemoteRuntime:
    """One model version on a TF Serving, as a ``ModelRuntime``."""

    def __init__(self, server: ModelServer, name: str, version: int) -> None:
        self._server = server
        self._name = name
        self._version = version
        self._spec: ModelSpec | None = None

    @property
    def spec(self) -> ModelSpec:
        if self._spec is None:
            raise ModelNotFound(f"model '{self._name}' version {self._version} is not loaded")
        return self._spec

    def load(self) -> None:
        self._spec = self._server.metadata(self._name, self._version)
        server = self._server
        logger.info(
            "model %s version %d served by %s (%s)",
            self._name,
            self._version,
            server.target,
            server.protocol,
        )

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._server.predict(self.spec, inputs)

    def close(self) -> None:
        self._spec = None
