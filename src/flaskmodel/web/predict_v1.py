"""TensorFlow Serving's REST API: ``/v1/models/<m>[/versions/<v>|/labels/<l>]`` (status),
``.../metadata`` and ``POST ...:predict`` (row ``instances`` or columnar ``inputs``).

The colon in ``<m>:predict`` is part of the last path segment, so one ``<path:path>`` rule per
method (``web.routes``) takes the rest of the path and ``_target`` splits it. Version labels
come from the model's ``flaskmodel.json`` (``version_labels``); an unknown label is a 404.
Predictions run on the workers through ``SyncPredictor`` (the batcher's path), never in this
process.
"""

from __future__ import annotations

import re
from typing import Any

from flaskmodel.codecs.tfserving_json import TF_DTYPES, decode_inputs, encode_outputs
from flaskmodel.errors import InvalidInput, InvalidRequest, ModelNotFound, NotFound
from flaskmodel.schemas import MODEL_NAME_PATTERN, ModelSpec, TensorSpec
from flaskmodel.web.body import is_whole_number, parse_tensor_body
from flaskmodel.web.call import Call, Reply
from flaskmodel.web.services import Services

_PATH = re.compile(r"(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+)|/labels/(?P<label>[^/]+))?")
METHOD_NAME = "tensorflow/serving/predict"


def _target(path: str) -> tuple[str, int | None, str | None]:
    """Model name, version and label of ``<m>[/versions/<v>|/labels/<l>]``."""
    match = _PATH.fullmatch(path)
    if match is None:
        raise NotFound(f"no such resource: /v1/models/{path}")
    name, version, label = match.group("name", "version", "label")
    if not re.match(MODEL_NAME_PATTERN, name):
        raise ModelNotFound(f"model '{name[:64]}' not found")
    if version is not None and not is_whole_number(version):
        raise InvalidRequest(f"version must be a positive integer, got {version[:32]!r}")
    return name, int(version) if version is not None else None, label


def status_or_metadata(svc: Services, call: Call) -> Reply:
    """Model status, or with ``/metadata`` the signature in TF Serving's exact shape."""
    path: str = call.params["path"]
    metadata = path.endswith("/metadata")
    name, version, label = _target(path.removesuffix("/metadata") if metadata else path)
    sync = svc.sync
    if metadata:
        return 200, model_metadata(sync.model(name, version, label)[1]), {}
    advert = sync.advert(name)
    if label is not None:
        version = sync.model(name, None, label)[1].version
    states = dict(advert.states)
    states.update(dict.fromkeys(advert.versions, "AVAILABLE"))
    if version is not None:
        if version not in states:
            raise ModelNotFound(f"model '{name}' has no version {version} (has {advert.versions})")
        states = {version: states[version]}
    status = {
        "model_version_status": [
            {
                "version": str(v),
                "state": state,
                "status": {"error_code": "OK", "error_message": ""},
            }
            for v, state in sorted(states.items())
        ]
    }
    return 200, status, {}


def predict(svc: Services, call: Call) -> Reply:
    """``:predict``; ``:classify`` and ``:regress`` are refused (no such signatures served)."""
    path: str = call.params["path"]
    base, colon, verb = path.rpartition(":")
    if not colon:
        raise NotFound(f"no such resource: POST /v1/models/{path} (did you mean ':predict'?)")
    name, version, label = _target(base)
    if verb in ("classify", "regress"):
        raise InvalidRequest(
            f"model '{name}': only ':predict' is served (no {verb} signature support)"
        )
    if verb != "predict":
        raise NotFound(f"no such method ':{verb[:32]}' (use ':predict')")
    _, spec = svc.sync.model(name, version, label)
    body = parse_tensor_body(call.body(), spec, ("instances", "inputs"))
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object with 'instances' or 'inputs'")
    rows, columns = "instances" in body, "inputs" in body
    if rows and columns:
        raise InvalidRequest(
            "use either 'instances' (row format) or 'inputs' (columnar format), not both"
        )
    if not rows and not columns:
        raise InvalidRequest("missing 'instances' (row format) or 'inputs' (columnar format)")
    signature = body.get("signature_name")
    if signature not in (None, "", spec.signature_name):
        raise InvalidInput(
            f"serving signature name {str(signature)[:64]!r} not found in model '{name}' "
            f"(it serves '{spec.signature_name}')"
        )
    arrays = decode_inputs(body["instances" if rows else "inputs"], spec, row_format=rows)
    # The parsed JSON (for a CT slice, megabytes of Python floats) goes before the wait: many
    # requests wait on the workers at once, and the web process should not hold all of it.
    del body
    outputs = svc.sync.predict(spec, arrays, ticket=call.rate)
    ordered = {t.name: outputs[t.name] for t in spec.outputs if t.name in outputs}
    return 200, encode_outputs(ordered, row_format=rows), {}


def model_metadata(spec: ModelSpec) -> dict[str, Any]:
    """``GET .../metadata``: TF Serving's doubled ``signature_def``, sizes as strings."""
    return {
        "model_spec": {"name": spec.name, "signature_name": "", "version": str(spec.version)},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    spec.signature_name: {
                        "inputs": {t.name: _tensor_info(t) for t in spec.inputs},
                        "outputs": {t.name: _tensor_info(t) for t in spec.outputs},
                        "method_name": METHOD_NAME,
                    }
                }
            }
        },
    }


def _tensor_info(tensor: TensorSpec) -> dict[str, Any]:
    return {
        "dtype": TF_DTYPES.get(tensor.dtype, "DT_INVALID"),
        "tensor_shape": {
            "dim": [{"size": str(-1 if d is None else d), "name": ""} for d in tensor.shape],
            "unknown_rank": False,
        },
        "name": tensor.tensor_name or f"{tensor.name}:0",
    }
