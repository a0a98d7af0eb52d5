"""``FastPredict``: the hot routes answered beside Flask.

TF Serving's ``POST /v1/models/<m>[/versions/<v>|/labels/<l>]:predict``, V2's
``POST /v2/models/<m>[/versions/<v>]/infer``, and the job API's ``POST /v1/jobs`` and
``GET /v1/jobs/<id>`` carry the load, and Flask's machinery around them (request object and
context, routing, hooks, response object) cost about as much of the web tier's CPU per small
request as the routes' own work: taking the predict route past Flask cut the web tier's CPU per
M1 request from ~0.69 to ~0.38 ms. This WSGI layer answers them with the routes' own code
(``predict_answer``, ``parse_infer``/``run_infer``, ``create_answer``, ``get_answer``), the app's
error mapping (``error_answer``) and the same metrics (``flaskmodel_http_*`` under each route's
rule), and hands every other request to Flask untouched. It steps aside, leaving the request to
Flask, whenever Flask would do more than it does: API keys or rate limits configured (the
caller's identity, its limits and its jobs' ownership are Flask's), a body without a length or
over ``web.max_request_bytes`` (Flask answers 413), a V2 call with a ``Prefer`` header (a job),
any other method or path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from flask import Flask, Response

from flaskmodel.codecs import compact_json
from flaskmodel.logs import set_job_id
from flaskmodel.metrics import catalogue
from flaskmodel.metrics.recorder import RECORDER
from flaskmodel.schemas import JobRequest
from flaskmodel.storage.redis import connect
from flaskmodel.web.body import parse, parse_json, read_prefer
from flaskmodel.web.errors import error_answer
from flaskmodel.web.infer_v2 import HEADER_LENGTH, parse_infer, run_infer
from flaskmodel.web.jobs import Caller, create_answer, get_answer
from flaskmodel.web.predict_v1 import predict_answer
from flaskmodel.web.services import Services

logger = logging.getLogger(__name__)

PREFIX = "/v1/models/"
RULE = PREFIX + "<path:path>"  # the Flask rule it answers for: its metrics label
JOBS = "/v1/jobs"
JOB_PREFIX = JOBS + "/"
JOB_RULE = JOB_PREFIX + "<job_id>"
V2_PREFIX = "/v2/models/"
V2_RULE = V2_PREFIX + "<name>/infer"
V2_VERSION_RULE = V2_PREFIX + "<name>/versions/<version>/infer"

StartResponse = Callable[..., Any]
# A route's answer: a JSON body, a response (V2 binary), or (body, status, headers).
Answer = dict[str, Any] | Response | tuple[dict[str, Any], int, dict[str, str]]
Routed = tuple[str, Callable[[], Answer]]  # the route's rule and how to answer it
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class FastPredict:
    """WSGI middleware in front of the Flask app (see the module docstring)."""

    def __init__(self, app: Flask, flask_wsgi: WSGIApp) -> None:
        self.flask = flask_wsgi  # the Flask app's own WSGI callable: everything else
        self._svc: Services = app.extensions["flaskmodel"]
        self._limit = int(app.config["MAX_CONTENT_LENGTH"])
        settings = self._svc.settings
        self._target = settings.redis_url() if settings.redis.url else ""

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self._svc.keys.enabled or self._svc.rate_limiter is not None:
            return self.flask(environ, start_response)
        # PEP 3333: the path's bytes as latin-1 text; read as UTF-8, as werkzeug does.
        path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
        method = environ.get("REQUEST_METHOD")
        routed = None
        if method == "POST":
            routed = self._post(environ, path)
        elif method == "GET" and path.startswith(JOB_PREFIX):
            routed = self._get_job(environ, path.removeprefix(JOB_PREFIX))
        if routed is None:
            return self.flask(environ, start_response)
        return self._answer(*routed, start_response)

    def _post(self, environ: dict[str, Any], path: str) -> Routed | None:
        length = environ.get("CONTENT_LENGTH") or ""
        if not length.isdigit() or int(length) > self._limit:
            return None  # Flask reads a body without a length, and answers 413 past the limit
        stream = environ["wsgi.input"]

        def read() -> bytes:
            return bytes(stream.read(int(length)))

        svc = self._svc
        if path.startswith(PREFIX):
            return RULE, lambda: predict_answer(svc, path.removeprefix(PREFIX), read)
        if path == JOBS:
            who = Caller(None, environ.get("HTTP_IDEMPOTENCY_KEY"), environ.get("SCRIPT_NAME", ""))
            _, wait = read_prefer([environ["HTTP_PREFER"]] if "HTTP_PREFER" in environ else [])

            def create() -> Answer:
                return create_answer(svc, parse(JobRequest, parse_json(read())), who, wait)

            return JOBS, create
        if not path.startswith(V2_PREFIX) or "HTTP_PREFER" in environ:
            return None
        parts = path.removeprefix(V2_PREFIX).split("/")
        if len(parts) == 2 and parts[1] == "infer":
            rule, version = V2_RULE, None
        elif len(parts) == 4 and parts[1] == "versions" and parts[3] == "infer":
            rule, version = V2_VERSION_RULE, parts[2]
        else:
            return None
        header_length = environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH")

        def infer() -> Answer:
            return run_infer(svc, parse_infer(svc, parts[0], version, header_length, read))

        return rule, infer

    def _get_job(self, environ: dict[str, Any], job_id: str) -> Routed | None:
        if not job_id or "/" in job_id:
            return None
        wait = next(
            (v for k, v in parse_qsl(environ.get("QUERY_STRING", ""), True) if k == "wait"), None
        )

        def read_job() -> Answer:
            set_job_id(job_id)
            return get_answer(self._svc, job_id, wait, None)

        return JOB_RULE, read_job

    def _answer(
        self, rule: str, answer: Callable[[], Answer], start_response: StartResponse
    ) -> Iterable[bytes]:
        started = time.perf_counter()
        self._start_metrics()
        set_job_id(None)  # a keep-alive connection's earlier request may have set one
        content_type, headers = "application/json", dict[str, str]()
        try:
            body = answer()
            status = 200
            if isinstance(body, tuple):  # a route's (body, status, headers)
                body, status, headers = body
            if isinstance(body, Response):  # V2 binary tensors
                data, content_type = body.get_data(), str(body.mimetype)
                headers = {k: v for k, v in body.headers.items() if k == HEADER_LENGTH}
            else:
                data = compact_json.dumps(body, newline=True)
        except Exception as exc:  # noqa: BLE001 - answered as the app answers it (logged there)
            error = error_answer(exc)
            status, headers = error.status, error.headers
            data = compact_json.dumps(error.body(), newline=True)
        start_response(
            f"{status} {HTTPStatus(status).phrase}",
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(data))),
                *headers.items(),
            ],
        )
        labels = (rule, "GET" if rule == JOB_RULE else "POST", str(status))
        RECORDER.inc(catalogue.HTTP_REQUESTS, labels)
        RECORDER.observe(catalogue.HTTP_DURATION, labels, time.perf_counter() - started)
        set_job_id(None)
        return [data]

    def _start_metrics(self) -> None:
        """The process's metrics flusher, as the app's ``before_request`` hook starts it."""
        settings = self._svc.settings
        RECORDER.start(lambda: connect(settings), settings.metrics.flush_seconds, self._target)
