"""A stand-in for TensorFlow Serving, for the test suite only (``tensorflow_model_server`` cannot be
installed here).

It serves real SavedModels through the official TF Serving gRPC services, generated from TF
Serving's own protos (``tensorflow-serving-api``): ``PredictionService/Predict``,
``PredictionService/GetModelMetadata`` and ``ModelService/GetModelStatus``, plus TF Serving's REST
API (``GET /v1/models/<m>[/versions/<v>]``, ``.../metadata``, ``POST ...:predict`` in row and
columnar form, ``{"b64": ...}`` strings, ``{"error": ...}`` bodies). Tensors are converted with
TensorFlow's own ``make_tensor_proto`` / ``make_ndarray`` and metadata is the ``SignatureDef`` read
from ``saved_model.pb``, as TF Serving does, so FlaskModel's clients meet an independent
implementation. Every version folder found at start is loaded and AVAILABLE (no reloading).

Same flags as the real server, so the command lines look alike::

    python -m tests.runtime.tfserving_standin --port=8500 --rest_api_port=8501 \\
        --model_name=tiny --model_base_path=/srv/models/tiny      # or --model_config_file=...

plus one of its own: ``--predict_delay_ms=<model>=<ms>`` slows that model's predictions (deadline
tests).
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format, text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

logger = logging.getLogger(__name__)

SIGNATURE = "serving_default"


class ServingError(Exception):
    """An error with its gRPC status code (and the REST status TF Serving gives it)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400}.get(
            self.code, 500
        )


class Servable:
    """One loaded version of one model."""

    def __init__(self, name: str, version: int, path: Path) -> None:
        self.name = name
        self.version = version
        self._keep = tf.saved_model.load(str(path))
        self.fn = self._keep.signatures[SIGNATURE]
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((path / "saved_model.pb").read_bytes())
        self.signature_def = proto.meta_graphs[0].signature_def[SIGNATURE]


class Models:
    """The served models: name → version → ``Servable``."""

    def __init__(self, configs: dict[str, Path], delays: dict[str, float]) -> None:
        self.delays = delays
        self.servables: dict[str, dict[int, Servable]] = {}
        for name, base in configs.items():
            self.servables[name] = {
                int(p.name): Servable(name, int(p.name), p)
                for p in base.iterdir()
                if p.name.isdigit() and (p / "saved_model.pb").is_file()
            }

    def find(self, name: str, version: int | None) -> Servable:
        versions = self.servables.get(name, {})
        wanted = f"Specific({name}, {version})" if version else f"Latest({name})"
        if not versions or (version is not None and version not in versions):
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {wanted}"
            )
        return versions[version if version is not None else max(versions)]

    def predict(self, servable: Servable, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        expected = set(servable.signature_def.inputs)
        if set(inputs) != expected:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input names {sorted(inputs)} do not match the signature's {sorted(expected)}",
            )
        time.sleep(self.delays.get(servable.name, 0.0))
        try:
            tensors = {
                k: tf.constant(v, dtype=servable.fn.structured_input_signature[1][k].dtype)
                for k, v in inputs.items()
            }
            return {k: v.numpy() for k, v in servable.fn(**tensors).items()}
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    def __init__(self, models: Models) -> None:
        self.models = models

    def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802 - the proto's name
        try:
            servable = _servable(self.models, request.model_spec)
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            outputs = self.models.predict(servable, inputs)
        except ServingError as exc:
            context.abort(exc.code, exc.message)
        reply = predict_pb2.PredictResponse()
        reply.model_spec.name = servable.name
        reply.model_spec.version.value = servable.version
        reply.model_spec.signature_name = SIGNATURE
        for name, value in outputs.items():
            reply.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return reply

    def GetModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        try:
            servable = _servable(self.models, request.model_spec)
        except ServingError as exc:
            context.abort(exc.code, exc.message)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        signatures.signature_def[SIGNATURE].CopyFrom(servable.signature_def)
        reply = get_model_metadata_pb2.GetModelMetadataResponse()
        reply.model_spec.name = servable.name
        reply.model_spec.version.value = servable.version
        reply.metadata["signature_def"].Pack(signatures)
        return reply


class ModelService(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    def __init__(self, models: Models) -> None:
        self.models = models

    def GetModelStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
        try:
            return status_reply(self.models, request.model_spec.name, _version(request.model_spec))
        except ServingError as exc:
            context.abort(exc.code, exc.message)


def _version(spec: Any) -> int | None:
    return int(spec.version.value) if spec.HasField("version") else None


def _servable(models: Models, spec: Any) -> Servable:
    if spec.signature_name not in ("", SIGNATURE):
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f'Serving signature name: "{spec.signature_name}" not found in signature def',
        )
    return models.find(spec.name, _version(spec))


def status_reply(models: Models, name: str, version: int | None) -> Any:
    found = (
        [models.find(name, version)] if version else list(models.servables.get(name, {}).values())
    )
    if not found:
        raise ServingError(
            grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}"
        )
    reply = get_model_status_pb2.GetModelStatusResponse()
    for servable in found:
        entry = reply.model_version_status.add()
        entry.version = servable.version
        entry.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    return reply


_PATH = re.compile(r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<rest>.*)")


class RestHandler(BaseHTTPRequestHandler):
    models: Models  # set on the subclass made by ``serve``

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug(format, *args)

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> tuple[str, str, int | None]:
        match = _PATH.fullmatch(self.path)
        if match is None:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {self.path}")
        version = int(match["version"]) if match["version"] else None
        return match["name"], match["rest"], version

    def do_GET(self) -> None:
        try:
            name, rest, version = self._route()
            if rest == "/metadata":
                servable = self.models.find(name, version)
                signatures = get_model_metadata_pb2.SignatureDefMap()
                signatures.signature_def[SIGNATURE].CopyFrom(servable.signature_def)
                self._answer(
                    200,
                    {
                        "model_spec": {
                            "name": name,
                            "signature_name": "",
                            "version": str(servable.version),
                        },
                        "metadata": {
                            "signature_def": json_format.MessageToDict(
                                signatures, preserving_proto_field_name=True
                            )
                        },
                    },
                )
            elif rest == "":
                reply = status_reply(self.models, name, version)
                body = json_format.MessageToDict(
                    reply,
                    preserving_proto_field_name=True,
                    always_print_fields_with_no_presence=True,
                )
                self._answer(200, body)
            else:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Malformed request: GET {self.path}")
        except ServingError as exc:
            self._answer(exc.http_status, {"error": exc.message})

    def do_POST(self) -> None:
        try:
            name, rest, version = self._route()
            if rest != ":predict":
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND, f"Malformed request: POST {self.path}"
                )
            servable = self.models.find(name, version)
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length))
            except ValueError as exc:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"JSON Parse error: {exc}"
                ) from exc
            rows = "instances" in body
            if rows == ("inputs" in body):
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "Missing 'inputs' or 'instances' key" if not rows else "Both keys given",
                )
            inputs = _json_inputs(servable, body["instances" if rows else "inputs"], rows)
            outputs = self.models.predict(servable, inputs)
            self._answer(200, _json_outputs(outputs, rows))
        except ServingError as exc:
            self._answer(exc.http_status, {"error": exc.message})


def _json_inputs(servable: Servable, value: Any, rows: bool) -> dict[str, np.ndarray]:
    names = sorted(servable.signature_def.inputs)
    if rows:
        if value and all(isinstance(v, dict) for v in value):
            columns = {k: [row[k] for row in value] for k in value[0]}
        else:
            columns = {names[0]: value}
    else:
        columns = value if isinstance(value, dict) else {names[0]: value}
    out = {}
    for key, column in columns.items():
        info = servable.signature_def.inputs.get(key)
        if info is None:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown input '{key}'")
        try:
            if info.dtype == tf.string.as_datatype_enum:
                out[key] = np.array(_strings(column), dtype=object)
            else:
                out[key] = np.array(column, dtype=tf.dtypes.as_dtype(info.dtype).as_numpy_dtype)
        except (KeyError, TypeError, ValueError) as exc:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input '{key}': {exc}") from exc
    return out


def _strings(node: Any) -> Any:
    if isinstance(node, list):
        return [_strings(n) for n in node]
    if isinstance(node, dict):
        return base64.b64decode(node["b64"])
    return str(node).encode()


def _json_value(name: str, value: np.ndarray) -> Any:
    if value.dtype == object:

        def text(v: bytes) -> Any:
            return {"b64": base64.b64encode(v).decode()} if name.endswith("_bytes") else v.decode()

        return np.vectorize(text, otypes=[object])(value).tolist() if value.size else []
    return value.tolist()


def _json_outputs(outputs: dict[str, np.ndarray], rows: bool) -> dict[str, Any]:
    encoded = {k: _json_value(k, v) for k, v in outputs.items()}
    if not rows:
        return {"outputs": next(iter(encoded.values())) if len(encoded) == 1 else encoded}
    if len(encoded) == 1:
        return {"predictions": next(iter(encoded.values()))}
    count = len(next(iter(encoded.values())))
    return {"predictions": [{k: v[i] for k, v in encoded.items()} for i in range(count)]}


def serve(models: Models, port: int, rest_port: int) -> tuple[Any, ThreadingHTTPServer]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(models), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(models), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    handler = type("Handler", (RestHandler,), {"models": models})
    rest = ThreadingHTTPServer(("127.0.0.1", rest_port), handler)
    threading.Thread(target=rest.serve_forever, daemon=True).start()
    return server, rest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rest_api_port", type=int, required=True)
    parser.add_argument("--model_name")
    parser.add_argument("--model_base_path")
    parser.add_argument("--model_config_file")
    parser.add_argument("--predict_delay_ms", action="append", default=[])
    args = parser.parse_args()
    configs: dict[str, Path] = {}
    if args.model_config_file:
        config = model_server_config_pb2.ModelServerConfig()
        text_format.Parse(Path(args.model_config_file).read_text(), config)
        for entry in config.model_config_list.config:
            configs[entry.name] = Path(entry.base_path)
    if args.model_name:
        configs[args.model_name] = Path(args.model_base_path)
    delays = {k: float(v) / 1000 for k, v in (d.split("=", 1) for d in args.predict_delay_ms)}
    server, _ = serve(Models(configs, delays), args.port, args.rest_api_port)
    print(f"stand-in TF Serving: gRPC {args.port}, REST {args.rest_api_port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
