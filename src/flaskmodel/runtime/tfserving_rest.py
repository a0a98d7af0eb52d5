"""Remote backend: a TensorFlow Serving REST endpoint (``runtime.backend = "tfserving_rest"``).

``TfServingRestClient`` holds one pooled, thread-safe HTTP connection manager per worker process
and speaks TF Serving's REST API: ``GET /v1/models/<m>`` (versions that are AVAILABLE),
``GET .../versions/<v>/metadata`` (the ``serving_default`` signature → ``ModelSpec``) and
``POST .../versions/<v>:predict`` in the columnar form (strings as ``{"b64": ...}``).
``runtime()`` gives one model version on it as a ``RemoteRuntime``. Errors map onto the
error tree: 400 → ``InvalidInput``, 404 → ``ModelNotFound``, unreachable or 5xx → 503.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import urllib3

from flaskmodel.codecs.tfserving_json import FROM_TF_DTYPES, decode_outputs, encode_columnar
from flaskmodel.errors import (
    DeadlineExceeded,
    FlaskModelError,
    InternalError,
    InvalidInput,
    ModelNotFound,
    ServiceUnavailable,
)
from flaskmodel.runtime.remote import RemoteRuntime
from flaskmodel.schemas import ModelSpec, TensorSpec

SIGNATURE = "serving_default"


class TfServingRestClient:
    """Calls one TensorFlow Serving REST endpoint (``http://host:8501``)."""

    def __init__(self, base_url: str, *, timeout: float, max_connections: int = 16) -> None:
        self.base_url = base_url.rstrip("/")
        self.target = self.base_url
        self.protocol = "REST"
        self._http = urllib3.PoolManager(
            num_pools=4,
            maxsize=max_connections,
            retries=False,
            timeout=urllib3.Timeout(total=timeout),
        )

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = self.base_url + path
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        try:
            response = self._http.request(
                method, url, body=payload, headers={"Content-Type": "application/json"}
            )
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise DeadlineExceeded(f"TensorFlow Serving at {url} timed out: {exc}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise ServiceUnavailable(
                f"TensorFlow Serving at {url} unreachable: {exc}", retry_after=5
            ) from exc
        try:
            data = json.loads(response.data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ServiceUnavailable(
                f"TensorFlow Serving at {url} answered {response.status} without JSON"
            ) from exc
        if response.status >= 400:
            message = data.get("error") if isinstance(data, dict) else None
            text = f"TensorFlow Serving: {message or response.status}"
            error: type[FlaskModelError] = ServiceUnavailable
            if response.status == 404:
                error = ModelNotFound
            elif response.status == 400:
                error = InvalidInput
            elif response.status == 504:
                error = DeadlineExceeded
            raise error(text)
        return data

    def versions(self, name: str) -> list[int]:
        """The versions of ``name`` in state AVAILABLE ([] when TF Serving does not know it)."""
        try:
            status = self._call("GET", f"/v1/models/{name}")
        except ModelNotFound:
            return []
        return sorted(
            int(entry["version"])
            for entry in status.get("model_version_status", [])
            if entry.get("state") == "AVAILABLE"
        )

    def metadata(self, name: str, version: int) -> ModelSpec:
        """The ``serving_default`` signature of one version as a ``ModelSpec``."""
        body = self._call("GET", f"/v1/models/{name}/versions/{version}/metadata")
        try:
            signature = body["metadata"]["signature_def"]["signature_def"][SIGNATURE]
            return ModelSpec(
                name=name,
                version=version,
                inputs=[_tensor(k, v) for k, v in sorted(signature["inputs"].items())],
                outputs=[_tensor(k, v) for k, v in sorted(signature["outputs"].items())],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InternalError(
                f"TensorFlow Serving metadata of '{name}' version {version} has no usable "
                f"'{SIGNATURE}' signature: {exc}"
            ) from exc

    def predict(self, spec: ModelSpec, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        path = f"/v1/models/{spec.name}/versions/{spec.version}:predict"
        body = self._call("POST", path, {"inputs": encode_columnar(inputs)})
        if not isinstance(body, dict) or "outputs" not in body:
            raise InternalError(f"TensorFlow Serving predict of '{spec.name}' gave no 'outputs'")
        return decode_outputs(body["outputs"], spec)

    def runtime(self, name: str, version: int) -> RemoteRuntime:
        """One version of ``name`` on this server, as a ``ModelRuntime``."""
        return RemoteRuntime(self, name, version)

    def close(self) -> None:
        self._http.clear()


def _tensor(name: str, info: dict[str, Any]) -> TensorSpec:
    if info.get("tensor_shape", {}).get("unknown_rank"):
        raise ValueError(f"tensor {name!r} has unknown rank")
    dims = info.get("tensor_shape", {}).get("dim", [])
    shape = [None if int(d["size"]) < 0 else int(d["size"]) for d in dims]
    dtype = FROM_TF_DTYPES.get(info["dtype"])
    if dtype is None:
        raise ValueError(f"tensor {name!r} has unsupported dtype {info['dtype']}")
    return TensorSpec(name=name, dtype=dtype, shape=shape, tensor_name=info.get("name"))
