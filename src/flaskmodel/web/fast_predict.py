"""``FastPredict``: the synchronous inference routes answered beside Flask.

TF Serving's ``POST /v1/models/<m>[/versions/<v>|/labels/<l>]:predict`` and V2's
``POST /v2/models/<m>[/versions/<v>]/infer`` are the hot path, and Flask's machinery around them
(request object and context, routing, hooks, response object) cost about as much of the web
tier's CPU per small request as the routes' own work: taking them past Flask cut the web tier's
CPU per M1 request from ~0.69 to ~0.38 ms. This WSGI layer answers them with the routes' own code
(``predict_answer``, ``parse_infer``/``run_infer``), the app's error mapping (``error_answer``)
and the same metrics (``flaskmodel_http_*`` under each route's rule), and hands every other
request to Flask untouched. It steps aside, leaving the request to Flask, whenever Flask would
do more than it does: API keys or rate limits configured, a body without a length or over
``web.max_request_bytes`` (Flask answers 413), a V2 call with a ``Prefer`` header (a job), any
other method or path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

import orjson
from flask import Flask, Response

from flaskmodel.logs import set_job_id
from flaskmodel.metrics import catalogue
from flaskmodel.metrics.recorder import RECORDER
from flaskmodel.storage.redis import connect
from flaskmodel.web.errors import error_answer
from flaskmodel.web.infer_v2 import HEADER_LENGTH, parse_infer, run_infer
from flaskmodel.web.predict_v1 import predict_answer
from flaskmodel.web.services import Services

logger = logging.getLogger(__name__)

PREFIX = "/v1/models/"
RULE = PREFIX + "<path:path>"  # the Flask rule it answers for: its metrics label
V2_PREFIX = "/v2/models/"
V2_RULE = V2_PREFIX + "<name>/infer"
V2_VERSION_RULE = V2_PREFIX + "<name>/versions/<version>/infer"

StartResponse = Callable[..., Any]
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
        # PEP 3333: the path's bytes as latin-1 text; read as UTF-8, as werkzeug does.
        path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
        length = environ.get("CONTENT_LENGTH") or ""
        if (
            environ.get("REQUEST_METHOD") != "POST"
            or not length.isdigit()
            or int(length) > self._limit
            or self._svc.keys.enabled
            or self._svc.rate_limiter is not None
        ):
            return self.flask(environ, start_response)
        stream = environ["wsgi.input"]

        def read() -> bytes:
            return bytes(stream.read(int(length)))

        if path.startswith(PREFIX):
            rule = RULE

            def answer() -> dict[str, Any] | Response:
                return predict_answer(self._svc, path.removeprefix(PREFIX), read)

        elif path.startswith(V2_PREFIX) and "HTTP_PREFER" not in environ:
            parts = path.removeprefix(V2_PREFIX).split("/")
            if len(parts) == 2 and parts[1] == "infer":
                rule, version = V2_RULE, None
            elif len(parts) == 4 and parts[1] == "versions" and parts[3] == "infer":
                rule, version = V2_VERSION_RULE, parts[2]
            else:
                return self.flask(environ, start_response)
            header_length = environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH")

            def answer() -> dict[str, Any] | Response:
                parsed = parse_infer(self._svc, parts[0], version, header_length, read)
                return run_infer(self._svc, parsed)

        else:
            return self.flask(environ, start_response)
        return self._answer(rule, answer, start_response)

    def _answer(
        self,
        rule: str,
        answer: Callable[[], dict[str, Any] | Response],
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        started = time.perf_counter()
        self._start_metrics()
        set_job_id(None)  # a keep-alive connection's earlier request may have set one
        content_type, headers = "application/json", {}
        try:
            body = answer()
            status = 200
            if isinstance(body, Response):  # V2 binary tensors
                data, content_type = body.get_data(), str(body.mimetype)
                headers = {k: v for k, v in body.headers.items() if k == HEADER_LENGTH}
            else:
                data = orjson.dumps(body, option=orjson.OPT_APPEND_NEWLINE)
        except Exception as exc:  # noqa: BLE001 - answered as the app answers it (logged there)
            error = error_answer(exc)
            status, headers = error.status, error.headers
            data = orjson.dumps(error.body(), option=orjson.OPT_APPEND_NEWLINE)
        start_response(
            f"{status} {HTTPStatus(status).phrase}",
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(data))),
                *headers.items(),
            ],
        )
        labels = (rule, "POST", str(status))
        RECORDER.inc(catalogue.HTTP_REQUESTS, labels)
        RECORDER.observe(catalogue.HTTP_DURATION, labels, time.perf_counter() - started)
        return [data]

    def _start_metrics(self) -> None:
        """The process's metrics flusher, as the app's ``before_request`` hook starts it."""
        settings = self._svc.settings
        RECORDER.start(lambda: connect(settings), settings.metrics.flush_seconds, self._target)
