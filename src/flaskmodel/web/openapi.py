"""``/openapi.json``: OpenAPI 3.1 built from ``url_map`` (a new route shows up by itself, with a
generic JSON answer until ``OPERATIONS`` names its pydantic schemas; the headers a route of the
table declares, and whether it is open, come from its ``Route``). ``/docs``: Swagger UI 5 from
the ``swagger-ui-py`` package's static files, served here (no CDN), rendering the 3.1 document
as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from http import HTTPStatus
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, send_from_directory, url_for
from pydantic import BaseModel, ConfigDict, create_model

from flaskmodel.codecs.v2 import InferRequest
from flaskmodel.schemas import JobRequest, JobView, SubmitResponse
from flaskmodel.web.auth import OPEN_ENDPOINTS
from flaskmodel.web.kv import PutValue
from flaskmodel.web.routes import route_of

bp = Blueprint("openapi", __name__)


def _swagger_ui_assets() -> Path:
    """Swagger UI's files in the ``swagger-ui-py`` package, found without importing it (its
    ``__init__`` loads Jinja and PyYAML for framework adapters we do not use)."""
    spec = find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed (it serves /docs)")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


ASSETS = _swagger_ui_assets()
#: Endpoints left out of the document: static files and the documentation itself.
HIDDEN = re.compile(r"^(static|ui\.ui_asset|openapi\..*)$")
_CONVERTER = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
_TYPES = {"int": "integer", "float": "number"}
_REF = "#/components/schemas/{model}"


class Open(BaseModel):
    """A JSON object whose fields vary (by model, by format)."""

    model_config = ConfigDict(extra="allow")


class PredictRequest(Open):
    """TF Serving ``:predict``: row ``instances`` or columnar ``inputs`` (not both)."""

    signature_name: str | None = None
    instances: list[Any] | None = None
    inputs: Any = None


# Bodies the views build as dicts, described here for the document only.
_S, _B, _ROWS = (str, ...), (bool, ...), (list[dict[str, Any]], ...)
ErrorBody = create_model("ErrorBody", error=_S, type=_S)
HealthStatus = create_model("HealthStatus", status=_S)
Readiness = create_model(
    "Readiness", __base__=Open, status=_S, redis=_S, workers=_ROWS, models=(list[str], [])
)
JobList = create_model("JobList", jobs=(list[JobView], ...))
KvEntry = create_model("KvEntry", key=_S, value=(Any, ...), ttl=(int | None, ...))
SeriesResults = create_model("SeriesResults", __base__=Open, series_uid=_S, model=_S, slices=_ROWS)
LegacySubmit = create_model("LegacySubmit", __base__=SubmitResponse, task_id=_S)
_ANY, _STRS = (Any, None), (list[str], ...)
PredictResponse = create_model(
    "PredictResponse", __base__=Open, predictions=(list[Any] | None, None), outputs=_ANY
)
ServerMetadata = create_model("ServerMetadata", name=_S, version=_S, extensions=_STRS)
Live = create_model("Live", live=_B)
Ready = create_model("Ready", ready=_B)
_TENSOR: dict[str, Any] = {"name": _S, "datatype": _S, "shape": (list[int], ...)}
TensorMetadata = create_model("TensorMetadata", **_TENSOR)
_TENSORS = (list[TensorMetadata], ...)
_MODEL: dict[str, Any] = {"name": _S, "versions": _STRS, "platform": _S}
ModelMetadata = create_model("ModelMetadata", **_MODEL, inputs=_TENSORS, outputs=_TENSORS)
ModelReady = create_model("ModelReady", name=_S, ready=_B)
InferOutputEntry = create_model("InferOutputEntry", __base__=Open, **_TENSOR, data=_ANY)
_OUTPUTS = (list[InferOutputEntry], ...)
InferResponse = create_model(
    "InferResponse", model_name=_S, model_version=_S, id=(str | None, None), outputs=_OUTPUTS
)


#: A response body: a model, a media type with a raw schema, or None (no body).
Body = type[BaseModel] | tuple[str, dict[str, Any]] | None


@dataclass(frozen=True)
class Operation:
    summary: str
    responses: dict[int, Body]
    request: type[BaseModel] | None = None
    query: dict[str, dict[str, Any]] = field(default_factory=dict)
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Why the operation is deprecated and what replaces it (``None``: current).
    deprecated: str | None = None


_HTML, _INT = ("text/html", {"type": "string"}), {"type": "integer", "minimum": 1}
OPERATIONS: dict[str, Operation] = {
    "health.healthz": Operation("The web process answers", {200: HealthStatus}),
    "health.readyz": Operation("Redis up and a worker ready", {200: Readiness, 503: Readiness}),
    "jobs.create_job": Operation(
        "Submit a job (202 new, 200 idempotent repeat; Prefer: wait=N waits for it: 200 with the"
        " finished job when it finished in time)",
        {202: SubmitResponse, 200: SubmitResponse},
        JobRequest,
    ),
    "jobs.list_jobs": Operation(
        "Recent jobs, newest first", {200: JobList}, query={"limit": {**_INT, "maximum": 500}}
    ),
    "jobs.get_job": Operation("A job's state, progress and result", {200: JobView}),
    "jobs.cancel_job": Operation("Cancel a job", {200: JobView}),
    "kv.get_value": Operation("Read a key", {200: KvEntry}),
    "kv.put_value": Operation("Write a key", {201: KvEntry, 200: KvEntry}, PutValue),
    "kv.delete_value": Operation("Delete a key", {204: None}),
    "series.series_results": Operation(
        "Per-slice labels of a series", {200: SeriesResults}, query={"model": {"type": "string"}}
    ),
    "legacy.inference": Operation(
        "Start a series job over slices [start, end)",
        {202: LegacySubmit, 200: LegacySubmit},
        deprecated='Deprecated: use `POST /v1/jobs` with `{"model", "series_uid", "slices":'
        ' {"start", "stop"}}` (the same series job; `GET /v1/jobs/{job_id}` follows it).',
    ),
    "legacy.get_result": Operation("A job's result, or its state", {200: Open, 202: Open}),
    "predict_v1.status_or_metadata": Operation(
        "TF Serving model status or (…/metadata) signature", {200: Open}
    ),
    "predict_v1.predict": Operation(
        "TF Serving ':predict'", {200: PredictResponse}, PredictRequest
    ),
    "infer_v2.server_metadata": Operation("Server metadata", {200: ServerMetadata}),
    "infer_v2.live": Operation("Server live", {200: Live}),
    "infer_v2.ready": Operation("Server ready", {200: Ready, 503: Ready}),
    "infer_v2.model_metadata": Operation("Model metadata", {200: ModelMetadata}),
    "infer_v2.model_ready": Operation("Model ready", {200: ModelReady}),
    "infer_v2.infer": Operation(
        "Inference (JSON or binary tensors; Prefer: respond-async|wait=N makes a job)",
        {200: InferResponse, 202: SubmitResponse},
        InferRequest,
        headers={"Inference-Header-Content-Length": _INT},
    ),
    "ui.ui_redirect": Operation("Redirect to /ui/", {308: None}),
    "ui.ui_index": Operation("The results viewer", {200: _HTML}),
    "jobs.thumbnail": Operation(
        "A slice thumbnail", {200: ("image/png", {"type": "string", "format": "binary"})}
    ),
    "metrics.metrics": Operation(
        "Prometheus metrics of every web and worker process (text exposition format 0.0.4)",
        {200: ("text/plain", {"type": "string"})},
    ),
}
_GENERIC = Operation("", {200: Open})
# How a client presents an API key when keys are configured (a 401 answers a missing one).
SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "description": "an API key as the token"},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def build_spec(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route of ``app`` (except static files and docs)."""
    schemas: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    used_ids: set[str] = set()
    tags: set[str] = set()
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if HIDDEN.match(rule.endpoint):
            continue
        route = route_of(rule)
        is_open = route.open if route is not None else rule.endpoint in OPEN_ENDPOINTS
        headers = {name: {"type": "string"} for name in (route.headers if route else ())}
        path = _CONVERTER.sub(r"{\g<name>}", rule.rule)
        params = [
            _param(m["name"], "path", {"type": _TYPES.get(m["converter"] or "", "string")})
            for m in _CONVERTER.finditer(rule.rule)
        ]
        op = OPERATIONS.get(rule.endpoint, _GENERIC)
        headers.update(op.headers)
        tags.add(rule.endpoint.partition(".")[0])
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            op_id = rule.endpoint.replace(".", "_")
            while op_id in used_ids:
                op_id += "_"
            used_ids.add(op_id)
            paths.setdefault(path, {})[method.lower()] = _operation(
                rule.endpoint, op_id, op, params, headers, is_open, schemas
            )
    return {
        "openapi": "3.1.0",
        "info": {"title": "FlaskModel", "version": _version()},
        "tags": [{"name": name} for name in sorted(tags)],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


def _operation(
    endpoint: str,
    op_id: str,
    op: Operation,
    params: list[dict[str, Any]],
    headers: dict[str, dict[str, Any]],
    is_open: bool,
    schemas: dict[str, Any],
) -> dict[str, Any]:
    error = {"application/json": {"schema": _ref(ErrorBody, schemas)}}
    responses: dict[str, Any] = {}
    for status, body in sorted(op.responses.items()):
        response: dict[str, Any] = {"description": HTTPStatus(status).phrase}
        if isinstance(body, tuple):
            response["content"] = {body[0]: {"schema": body[1]}}
        elif body is not None:
            response["content"] = {"application/json": {"schema": _ref(body, schemas)}}
        responses[str(status)] = response
    for series in ("4XX", "5XX"):
        responses[series] = {"description": "error", "content": error}
    extra = [_param(n, "query", s) for n, s in op.query.items()]
    extra += [_param(n, "header", s) for n, s in headers.items()]
    operation: dict[str, Any] = {
        "operationId": op_id,
        "tags": [endpoint.partition(".")[0]],
        "summary": op.summary or endpoint,
        "responses": responses,
    }
    if op.deprecated is not None:
        operation["deprecated"] = True
        operation["description"] = op.deprecated
    if not is_open:
        # API keys are optional (FLASKMODEL_SECURITY__*): either scheme, or none when off.
        operation["security"] = [{name: []} for name in SECURITY_SCHEMES] + [{}]
    if params or extra:
        operation["parameters"] = params + extra
    if op.request is not None:
        content = {"application/json": {"schema": _ref(op.request, schemas)}}
        operation["requestBody"] = {"required": True, "content": content}
    return operation


def _param(name: str, where: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", "schema": schema}


def _ref(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, str]:
    """Put ``model`` (and what it nests) into ``schemas``; answer a ``$ref`` to it."""
    if model.__name__ not in schemas:
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def _version() -> str:
    try:
        return package_version("flaskmodel")
    except PackageNotFoundError:
        return "0.0.0"


@bp.get("/openapi.json")
def openapi_json() -> dict[str, Any]:
    """The document, built once per app."""
    cached: dict[str, Any] | None = current_app.extensions.get("flaskmodel.openapi")
    if cached is None:
        cached = current_app.extensions["flaskmodel.openapi"] = build_spec(current_app)
    return cached


@bp.get("/docs")
def docs() -> Response:
    asset = url_for("openapi.docs_asset", name="swagger-ui.css").removesuffix("swagger-ui.css")
    spec_url = url_for("openapi.openapi_json")
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>FlaskModel API</title>
<link rel="stylesheet" href="{asset}swagger-ui.css">
</head><body><div id="swagger-ui"></div>
<script src="{asset}swagger-ui-bundle.js"></script>
<script src="{asset}swagger-ui-standalone-preset.js"></script>
<script>
window.ui = SwaggerUIBundle({{url: "{spec_url}", dom_id: "#swagger-ui", validatorUrl: null,
  deepLinking: true, presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  layout: "BaseLayout"}});
</script></body></html>
"""
    return Response(html, mimetype="text/html")


@bp.get("/docs/assets/<path:name>")
def docs_asset(name: str) -> Response:
    return send_from_directory(ASSETS, name, max_age=3600)
