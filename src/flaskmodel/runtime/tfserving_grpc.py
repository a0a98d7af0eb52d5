"""Remote backend: TensorFlow Serving's gRPC API (``tfserving_grpc`` in ``runtime.remote_models``).

``TfServingGrpcClient`` holds one channel to one ``host:port`` (the repository makes one client
per target, and the repository is per process: one channel per process) and calls the official
services of ``tensorflow-serving-api``: ``ModelService/GetModelStatus`` (versions AVAILABLE),
``PredictionService/GetModelMetadata`` (the ``serving_default`` signature → ``ModelSpec``) and
``PredictionService/Predict``, each with a deadline. Under gevent monkey-patching
``grpc.experimental.gevent.init_gevent()`` runs before the first channel, so calls yield to the
hub instead of blocking it. Status codes map onto the error tree: ``UNAVAILABLE`` → 503,
``DEADLINE_EXCEEDED`` → 504, ``INVALID_ARGUMENT`` / ``FAILED_PRECONDITION`` → 400, ``NOT_FOUND``
→ 404, anything else → 500. Tensors are converted by TensorFlow's own ``tf.make_tensor_proto`` /
``tf.make_ndarray`` (strings as object arrays of bytes); only the dtypes of ``TensorSpec`` pass.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import grpc
import numpy as np
import tensorflow as tf  # this backend runs in worker processes only; imported on first use
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from flaskmodel.codecs.tfserving_json import FROM_TF_DTYPES, TF_DTYPES
from flaskmodel.errors import (
    DeadlineExceeded,
    FlaskModelError,
    InternalError,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    ServiceUnavailable,
)
from flaskmodel.runtime.remote import RemoteRuntime
from flaskmodel.schemas import ModelSpec, TensorSpec

SIGNATURE = "serving_default"
# Largest message either way (TF Serving's own default is 2 GiB - 1 for its server).
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE

_gevent_lock = threading.Lock()
_gevent_ready = False


def init_gevent_if_patched() -> bool:
    """Make gRPC cooperate with gevent when this process is monkey-patched (once per process)."""
    global _gevent_ready  # noqa: PLW0603 - a process-wide switch of the grpc library
    if "gevent" not in sys.modules:
        return False
    from gevent import monkey  # noqa: PLC0415 - only where gevent is already in use

    if not monkey.is_module_patched("socket"):
        return False
    with _gevent_lock:
        if not _gevent_ready:
            import grpc.experimental.gevent as grpc_gevent  # noqa: PLC0415

            grpc_gevent.init_gevent()
            _gevent_ready = True
    return True


_ERRORS: dict[grpc.StatusCode, type[FlaskModelError]] = {
    grpc.StatusCode.UNAVAILABLE: ServiceUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidInput,
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
}


class TfServingGrpcClient:
    """Calls one TensorFlow Serving gRPC endpoint (``host:8500``)."""

    def __init__(self, target: str, *, timeout: float) -> None:
        self.target = target
        self.protocol = "gRPC"
        self.timeout = timeout
        init_gevent_if_patched()
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def _call(self, method: Any, request: Any, what: str) -> Any:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
            error = _ERRORS.get(code, InternalError)
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                text = f"TensorFlow Serving at {self.target}: {what} took over {self.timeout:g} s"
            else:
                text = (
                    f"TensorFlow Serving at {self.target}: {what} failed ({code.name}): {details}"
                )
            retry = 5.0 if error is ServiceUnavailable or error is Overloaded else None
            raise error(text, retry_after=retry) from exc

    def versions(self, name: str) -> list[int]:
        """The versions of ``name`` in state AVAILABLE ([] when TF Serving does not know it)."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        try:
            reply = self._call(self._models.GetModelStatus, request, f"status of '{name}'")
        except ModelNotFound:
            return []
        return sorted(int(s.version) for s in reply.model_version_status if s.state == AVAILABLE)

    def metadata(self, name: str, version: int) -> ModelSpec:
        """The ``serving_default`` signature of one version as a ``ModelSpec``."""
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = name
        request.model_spec.version.value = version
        request.metadata_field.append("signature_def")
        reply = self._call(
            self._predict.GetModelMetadata, request, f"metadata of '{name}' version {version}"
        )
        signatures = get_model_metadata_pb2.SignatureDefMap()
        try:
            if not reply.metadata["signature_def"].Unpack(signatures):
                raise ValueError("metadata is not a SignatureDefMap")
            signature = signatures.signature_def[SIGNATURE]
            return ModelSpec(
                name=name,
                version=version,
                inputs=[_tensor(k, v) for k, v in sorted(signature.inputs.items())],
                outputs=[_tensor(k, v) for k, v in sorted(signature.outputs.items())],
            )
        except (KeyError, ValueError) as exc:
            raise InternalError(
                f"TensorFlow Serving metadata of '{name}' version {version} has no usable "
                f"'{SIGNATURE}' signature: {exc}"
            ) from exc

    def predict(self, spec: ModelSpec, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = spec.name
        request.model_spec.version.value = spec.version
        request.model_spec.signature_name = SIGNATURE
        for name, array in inputs.items():
            request.inputs[name].CopyFrom(_to_proto(name, array))
        reply = self._call(
            self._predict.Predict, request, f"predict of '{spec.name}' version {spec.version}"
        )
        return {name: _from_proto(name, proto) for name, proto in reply.outputs.items()}

    def runtime(self, name: str, version: int) -> RemoteRuntime:
        """One version of ``name`` on this server, as a ``ModelRuntime``."""
        return RemoteRuntime(self, name, version)

    def close(self) -> None:
        self._channel.close()


def _tensor(name: str, info: Any) -> TensorSpec:
    if info.tensor_shape.unknown_rank:
        raise ValueError(f"tensor {name!r} has unknown rank")
    shape = [None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim]
    dtype = FROM_TF_DTYPES.get(types_pb2.DataType.Name(info.dtype))
    if dtype is None:
        raise ValueError(f"tensor {name!r} has unsupported dtype {info.dtype}")
    return TensorSpec(name=name, dtype=dtype, shape=shape, tensor_name=info.name or None)


def _to_proto(name: str, array: np.ndarray) -> Any:
    """The ``TensorProto`` of input ``name``."""
    if array.dtype.kind not in "OSU" and array.dtype.name not in TF_DTYPES:
        raise InvalidInput(f"input '{name}': dtype {array.dtype} cannot be sent to TF Serving")
    if not array.dtype.isnative:  # make_tensor_proto copies the raw bytes as they are
        array = array.astype(array.dtype.newbyteorder("="))
    try:
        return tf.make_tensor_proto(array)
    except (TypeError, ValueError) as exc:  # e.g. an object array holding numbers
        raise InvalidInput(f"input '{name}' cannot be sent to TF Serving: {exc}") from exc


def _from_proto(name: str, proto: Any) -> np.ndarray:
    """The numpy array of output ``name``."""
    if types_pb2.DataType.Name(proto.dtype) not in FROM_TF_DTYPES:
        raise InternalError(
            f"TF Serving output '{name}' has unsupported dtype "
            f"{types_pb2.DataType.Name(proto.dtype)}"
        )
    try:
        array: np.ndarray = tf.make_ndarray(proto)
    except (TypeError, ValueError) as exc:  # values that do not fit the shape
        raise InternalError(f"TF Serving output '{name}' cannot be read: {exc}") from exc
    return array
