"""In-process TensorFlow SavedModel backend (the loaded signature, never ``model.predict``).

TensorFlow is imported here only, inside methods, so importing this module stays cheap and the
web process never pulls it in.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from flaskmodel.errors import InvalidInput, ModelNotFound
from flaskmodel.runtime.flat_call import FlatCall
from flaskmodel.schemas import ModelSpec, TensorSpec

logger = logging.getLogger(__name__)

SIGNATURE = "serving_default"


def _tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # noqa: PLC0415 - heavy import kept out of module import

    return tf


class SavedModelRuntime:
    """Loads ``<models_root>/<name>/<version>/`` and calls its ``serving_default`` signature."""

    def __init__(self, name: str, version: int, path: Path) -> None:
        self._name = name
        self._version = version
        self._path = path
        self._fn: Any = None
        self._flat: FlatCall | None = None
        self._spec: ModelSpec | None = None

    @property
    def spec(self) -> ModelSpec:
        if self._spec is None:
            raise ModelNotFound(f"model '{self._name}' version {self._version} is not loaded")
        return self._spec

    def load(self) -> None:
        tf = _tf()
        loaded = tf.saved_model.load(str(self._path))
        if SIGNATURE not in loaded.signatures:
            raise ModelNotFound(
                f"model '{self._name}' version {self._version} has no '{SIGNATURE}' signature"
            )
        fn = loaded.signatures[SIGNATURE]
        _, kwargs = fn.structured_input_signature
        in_names, out_names = self._tensor_names()
        inputs = [
            TensorSpec(
                name=name,
                dtype=spec.dtype.name,
                shape=list(spec.shape.as_list()),
                tensor_name=in_names.get(name),
            )
            for name, spec in sorted(kwargs.items())
        ]
        outputs = [
            TensorSpec(
                name=name,
                dtype=spec.dtype.name,
                shape=list(spec.shape.as_list()),
                tensor_name=out_names.get(name),
            )
            for name, spec in sorted(fn.structured_outputs.items())
        ]
        self._keep = loaded  # the signature needs its owner alive
        self._fn = fn
        self._flat = FlatCall.probe(tf, fn, self._name)
        self._spec = ModelSpec(
            name=self._name, version=self._version, inputs=inputs, outputs=outputs
        )
        logger.info("loaded model %s version %d from %s", self._name, self._version, self._path)

    def _tensor_names(self) -> tuple[dict[str, str], dict[str, str]]:
        """Graph tensor names of the signature (what TF Serving's metadata reports)."""
        from tensorflow.core.protobuf import saved_model_pb2  # noqa: PLC0415 - heavy import

        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((self._path / "saved_model.pb").read_bytes())
        signature = proto.meta_graphs[0].signature_def[SIGNATURE]
        return (
            {k: v.name for k, v in signature.inputs.items()},
            {k: v.name for k, v in signature.outputs.items()},
        )

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tf = _tf()
        flat = self._flat
        try:
            result = None if flat is None else flat(tf, inputs)
            if result is None:
                result = self._fn(**{name: tf.constant(value) for name, value in inputs.items()})
        except tf.errors.InvalidArgumentError as exc:
            # The input's fault (TF Serving answers 400 for it too), not the server's.
            raise InvalidInput(f"model '{self._name}': {exc.message}") from exc
        return {name: value.numpy() for name, value in result.items()}

    def close(self) -> None:
        self._fn = None
        self._flat = None
        self._keep = None
