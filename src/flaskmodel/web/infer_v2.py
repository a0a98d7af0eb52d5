"""The Open Inference Protocol (KServe V2) REST API: health, server and model metadata, model
readiness and ``infer`` with JSON tensors or the binary tensor extension.

``infer`` runs synchronously on the workers (through ``SyncPredictor``, the batcher's path) with
the request's ``timeout`` parameter (microseconds) as its deadline. ``Prefer: respond-async``
turns it into a job (202, readable at ``/v1/jobs/<id>``); ``Prefer: wait=N`` makes the job and
waits up to N seconds for it, answering like a synchronous call if it finished, else 202.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

import numpy as np
from flask import Blueprint, Response, request

from flaskmodel.codecs import compact_json
from flaskmodel.codecs.tfserving_json import decode_outputs, encode_columnar
from flaskmodel.codecs.v2 import (
    InferRequest,
    check_outputs,
    decode_inputs,
    encode_outputs,
    split_body,
    v2_datatype,
)
from flaskmodel.errors import InvalidInput, InvalidRequest, ModelNotFound, error_class
from flaskmodel.schemas import JobRequest, JobState, ModelAdvert, ModelSpec
from flaskmodel.web.body import is_whole_number, parse, parse_json, prefer
from flaskmodel.web.jobs import finished_view, submit
from flaskmodel.web.services import Services, services

logger = logging.getLogger(__name__)

bp = Blueprint("infer_v2", __name__)

#: Exactly the protocol extensions implemented here.
EXTENSIONS = ["binary_tensor_data", "classification"]
HEADER_LENGTH = "Inference-Header-Content-Length"
Reply = Response | tuple[dict[str, Any], int, dict[str, str]] | dict[str, Any]


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    if not is_whole_number(text):
        raise InvalidRequest(f"version must be a positive integer, got {text[:32]!r}")
    return int(text)


@bp.get("/v2")
def server_metadata() -> dict[str, Any]:
    try:
        ours = package_version("flaskmodel")
    except PackageNotFoundError:
        ours = "unknown"
    return {"name": "flaskmodel", "version": ours, "extensions": EXTENSIONS}


@bp.get("/v2/health/live")
def live() -> dict[str, bool]:
    return {"live": True}


@bp.get("/v2/health/ready")
def ready() -> tuple[dict[str, bool], int, dict[str, str]]:
    """200 when a worker is ready and no model failed to load; 503 otherwise."""
    workers = services().workers.live()
    failed = any(w.errors for w in workers)
    ok = any(w.ready for w in workers) and not failed
    return {"ready": ok}, (200 if ok else 503), ({} if ok else {"Retry-After": "5"})


@bp.get("/v2/models/<name>")
@bp.get("/v2/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None) -> dict[str, Any]:
    advert, spec = services().sync.model(name, _version(version))
    return {
        "name": spec.name,
        "versions": [str(v) for v in advert.versions],
        "platform": "tensorflow_savedmodel",
        "inputs": [_tensor_metadata(t.name, t.dtype, t.shape) for t in spec.inputs],
        "outputs": [_tensor_metadata(t.name, t.dtype, t.shape) for t in spec.outputs],
    }


def _tensor_metadata(name: str, dtype: str, shape: list[int | None]) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": v2_datatype(dtype),
        "shape": [-1 if d is None else d for d in shape],
    }


@bp.get("/v2/models/<name>/ready")
@bp.get("/v2/models/<name>/versions/<version>/ready")
def model_ready(
    name: str, version: str | None = None
) -> tuple[dict[str, Any], int, dict[str, str]]:
    """200 once a ready worker serves it; 503 while no worker serves it or the version is still
    LOADING; 404 unknown, or a version unloaded (END)."""
    sync = services().sync
    wanted = _version(version)
    advert = sync.advert(name)
    if wanted is not None and wanted not in advert.versions:
        state = advert.states.get(wanted)
        if state == "LOADING":
            return {"name": name, "ready": False}, 503, {"Retry-After": "1"}
        if state == "END":
            raise ModelNotFound(f"model '{name}' version {wanted} was unloaded")
    _, spec = sync.model(name, wanted)
    return {"name": spec.name, "ready": True}, 200, {}


@bp.post("/v2/models/<name>/infer")
@bp.post("/v2/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None) -> Reply:
    svc = services()
    read = partial(request.get_data, cache=False)  # 413 past MAX_CONTENT_LENGTH (werkzeug)
    parsed = parse_infer(svc, name, version, request.headers.get(HEADER_LENGTH), read)
    respond_async, wait = prefer()
    if respond_async or wait is not None:
        return _as_job(*parsed, wait)
    return run_infer(svc, parsed)


Parsed = tuple[InferRequest, ModelAdvert, ModelSpec, dict[str, np.ndarray]]


def parse_infer(
    svc: Services,
    name: str,
    version: str | None,
    header_length: str | None,
    read_body: Callable[[], bytes],
) -> Parsed:
    """The request (its tensors already decoded, so not kept in it), the model's advert and the
    version's spec, and the input tensors."""
    advert, spec = svc.sync.model(name, _version(version))
    header, blobs = split_body(read_body(), header_length)
    infer_request = parse(InferRequest, parse_json(header))
    inputs = decode_inputs(infer_request, blobs, spec)
    check_outputs(infer_request, spec)
    # The body and its parsed tensors (for a CT slice as JSON, megabytes of Python floats) go
    # before the wait: many requests wait on the workers at once. The reply needs only the id,
    # the requested outputs and the parameters.
    return infer_request.model_copy(update={"inputs": []}), advert, spec, inputs


def run_infer(svc: Services, parsed: Parsed) -> dict[str, Any] | Response:
    """Run the call on the workers and answer it (no Flask request needed: ``fast_predict``
    serves the route beside Flask)."""
    infer_request, advert, spec, inputs = parsed
    wanted = check_outputs(infer_request, spec)
    outputs = svc.sync.predict(spec, inputs, outputs=wanted, timeout=_timeout(infer_request))
    return _response(infer_request, advert, spec, outputs)


def _timeout(infer_request: InferRequest) -> float | None:
    """The ``timeout`` parameter (schedule policy, microseconds) in seconds; None: default."""
    micros = infer_request.parameters.get("timeout")
    if micros is None:
        return None
    if not isinstance(micros, int) or isinstance(micros, bool) or micros < 0:
        raise InvalidInput("parameter 'timeout' must be a non-negative integer (microseconds)")
    return micros / 1e6 if micros else None


def _as_job(
    infer_request: InferRequest,
    advert: ModelAdvert,
    spec: ModelSpec,
    inputs: dict[str, np.ndarray],
    wait: float | None,
) -> Reply:
    job = JobRequest(model=spec.name, version=spec.version, inputs=encode_columnar(inputs))
    body, status, headers = submit(job)
    job_id = body["job_id"]
    if wait is not None:
        view = finished_view(job_id, wait, just_created=status == 202)
        if view.state is JobState.SUCCEEDED and view.result is not None:
            outputs = decode_outputs(view.result["outputs"], spec)
            return _response(infer_request, advert, spec, outputs)
        if view.error is not None:
            raise error_class(view.error.type)(view.error.message)
    if infer_request.id is not None:
        body["id"] = infer_request.id
    return body, status, {**headers, "Preference-Applied": "respond-async"}


def _response(
    infer_request: InferRequest,
    advert: ModelAdvert,
    spec: ModelSpec,
    outputs: dict[str, np.ndarray],
) -> dict[str, Any] | Response:
    entries, blobs = encode_outputs(infer_request, spec, outputs, advert.class_names)
    body: dict[str, Any] = {"model_name": spec.name, "model_version": str(spec.version)}
    if infer_request.id is not None:
        body["id"] = infer_request.id
    body["outputs"] = entries
    if not blobs:
        return body
    header = compact_json.dumps(body)  # as the app writes its JSON answers
    response = Response(b"".join([header, *blobs]), mimetype="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(len(header))
    return response
