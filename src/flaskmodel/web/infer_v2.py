"""The Open Inference Protocol (KServe V2) REST API: health, server and model metadata, model
readiness and ``infer`` with JSON tensors or the binary tensor extension.

``infer`` runs synchronously on the workers (through ``SyncPredictor``, the batcher's path) with
the request's ``timeout`` parameter (microseconds) as its deadline. ``Prefer: respond-async``
turns it into a job (202, readable at ``/v1/jobs/<id>``); ``Prefer: wait=N`` makes the job and
waits up to N seconds for it, answering like a synchronous call if it finished, else 202.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

import numpy as np

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
from flaskmodel.web.body import is_whole_number, parse, parse_json, read_prefer
from flaskmodel.web.call import Call, Raw, Reply
from flaskmodel.web.jobs import submit_job, wait_view
from flaskmodel.web.services import Services

#: Exactly the protocol extensions implemented here.
EXTENSIONS = ["binary_tensor_data", "classification"]
HEADER_LENGTH = "Inference-Header-Content-Length"


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    if not is_whole_number(text):
        raise InvalidRequest(f"version must be a positive integer, got {text[:32]!r}")
    return int(text)


def server_metadata(svc: Services, call: Call) -> Reply:
    try:
        ours = package_version("flaskmodel")
    except PackageNotFoundError:
        ours = "unknown"
    return 200, {"name": "flaskmodel", "version": ours, "extensions": EXTENSIONS}, {}


def live(svc: Services, call: Call) -> Reply:
    return 200, {"live": True}, {}


def ready(svc: Services, call: Call) -> Reply:
    """200 when a worker is ready and no model failed to load; 503 otherwise."""
    workers = svc.workers.live()
    failed = any(w.errors for w in workers)
    ok = any(w.ready for w in workers) and not failed
    return (200 if ok else 503), {"ready": ok}, ({} if ok else {"Retry-After": "5"})


def model_metadata(svc: Services, call: Call) -> Reply:
    """``/v2/models/<name>[/versions/<version>]``."""
    advert, spec = svc.sync.model(call.params["name"], _version(call.params.get("version")))
    return (
        200,
        {
            "name": spec.name,
            "versions": [str(v) for v in advert.versions],
            "platform": "tensorflow_savedmodel",
            "inputs": [_tensor_metadata(t.name, t.dtype, t.shape) for t in spec.inputs],
            "outputs": [_tensor_metadata(t.name, t.dtype, t.shape) for t in spec.outputs],
        },
        {},
    )


def _tensor_metadata(name: str, dtype: str, shape: list[int | None]) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": v2_datatype(dtype),
        "shape": [-1 if d is None else d for d in shape],
    }


def model_ready(svc: Services, call: Call) -> Reply:
    """``/v2/models/<name>[/versions/<version>]/ready``: 200 once a ready worker serves it; 503
    while no worker serves it or the version is still LOADING; 404 unknown, or a version
    unloaded (END)."""
    name: str = call.params["name"]
    sync = svc.sync
    wanted = _version(call.params.get("version"))
    advert = sync.advert(name)
    if wanted is not None and wanted not in advert.versions:
        state = advert.states.get(wanted)
        if state == "LOADING":
            return 503, {"name": name, "ready": False}, {"Retry-After": "1"}
        if state == "END":
            raise ModelNotFound(f"model '{name}' version {wanted} was unloaded")
    _, spec = sync.model(name, wanted)
    return 200, {"name": spec.name, "ready": True}, {}


def infer(svc: Services, call: Call) -> Reply:
    """``/v2/models/<name>[/versions/<version>]/infer``: on the workers now, or as a job with
    ``Prefer: respond-async`` or ``Prefer: wait=N``."""
    advert, spec = svc.sync.model(call.params["name"], _version(call.params.get("version")))
    header, blobs = split_body(call.body(), call.headers.get(HEADER_LENGTH))
    infer_request = parse(InferRequest, parse_json(header))
    inputs = decode_inputs(infer_request, blobs, spec)
    wanted = check_outputs(infer_request, spec)
    # The body and its parsed tensors (for a CT slice as JSON, megabytes of Python floats) go
    # before the wait: many requests wait on the workers at once. The reply needs only the id,
    # the requested outputs and the parameters.
    infer_request.inputs = []
    del header, blobs
    respond_async, wait = read_prefer(call.headers.get("Prefer"))
    if respond_async or wait is not None:
        return _as_job(svc, call, infer_request, advert, spec, inputs, wait)
    timeout = _timeout(infer_request)
    outputs = svc.sync.predict(spec, inputs, outputs=wanted, timeout=timeout, ticket=call.rate)
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
    svc: Services,
    call: Call,
    infer_request: InferRequest,
    advert: ModelAdvert,
    spec: ModelSpec,
    inputs: dict[str, np.ndarray],
    wait: float | None,
) -> Reply:
    if call.rate is not None:
        call.rate.admit()  # counted before the job is made
    job = JobRequest(model=spec.name, version=spec.version, inputs=encode_columnar(inputs))
    status, body, headers = submit_job(svc, job, call)
    job_id = body["job_id"]
    if wait is not None:
        view = wait_view(svc, job_id, wait, call.owner, just_created=status == 202)
        if view.state is JobState.SUCCEEDED and view.result is not None:
            outputs = decode_outputs(view.result["outputs"], spec)
            return _response(infer_request, advert, spec, outputs)
        if view.error is not None:
            raise error_class(view.error.type)(view.error.message)
    if infer_request.id is not None:
        body["id"] = infer_request.id
    return status, body, {**headers, "Preference-Applied": "respond-async"}


def _response(
    infer_request: InferRequest,
    advert: ModelAdvert,
    spec: ModelSpec,
    outputs: dict[str, np.ndarray],
) -> Reply:
    entries, blobs = encode_outputs(infer_request, spec, outputs, advert.class_names)
    body: dict[str, Any] = {"model_name": spec.name, "model_version": str(spec.version)}
    if infer_request.id is not None:
        body["id"] = infer_request.id
    body["outputs"] = entries
    if not blobs:
        return 200, body, {}
    header = compact_json.dumps(body)  # as the app writes its JSON answers
    data = Raw(b"".join([header, *blobs]), "application/octet-stream")
    return 200, data, {HEADER_LENGTH: str(len(header))}
