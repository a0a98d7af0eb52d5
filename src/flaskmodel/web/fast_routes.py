"""``FastRoutes``: the routes the table marks ``fast`` answered beside Flask.

TF Serving's ``:predict``, V2's ``infer`` and the job API's ``POST /v1/jobs`` and ``GET
/v1/jobs/<id>`` carry the load, and Flask's machinery around them (request object and context,
hooks, response object) cost about as much of the web tier's CPU per small request as the routes'
own work. This WSGI layer answers them with the same code as the Flask views, step for step:
the path matched by the app's own ``url_map`` (so both agree on the route and its parameters),
``RequestMetrics`` around the request, ``Gate`` for API keys and rate limits (its header fields
after the reply's own), the route's handler on a ``Call`` made by ``make_call``, errors answered
by ``error_reply`` and every reply written by ``encode``. One step differs, not what it answers:
on a route that ``counts_itself``, the rate-limit count is left to the handler (made with the
push of its sync call, no round trip of its own) and settled after it; a request the limit
refuses gets the same 429 as from Flask, and nothing it asked for was done. Everything else
goes to Flask untouched: paths of other routes, methods a route does not declare (``HEAD``,
``OPTIONS``), paths Flask would redirect or refuse.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any

from flask import Flask
from werkzeug.exceptions import HTTPException

from flaskmodel.logs import set_job_id
from flaskmodel.storage.gcra import Ticket
from flaskmodel.web.auth import Gate
from flaskmodel.web.call import encode, make_call
from flaskmodel.web.errors import error_reply
from flaskmodel.web.metrics import RequestMetrics
from flaskmodel.web.ratelimit import Headers
from flaskmodel.web.routes import Route, route_of
from flaskmodel.web.services import Services

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
Match = tuple[Route, Mapping[str, Any]]

# Fast routes' matches kept per (method, path), a werkzeug match costing a fifth of a small
# predict's CPU: a model's predict path repeats, a job's a few times. Bounded (emptied when full,
# short paths only): a flood of distinct paths costs a match each, as without it.
_CACHE_SIZE = 4096
_CACHE_PATH = 256
_STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}


class FastRoutes:
    """WSGI middleware in front of the Flask app (see the module docstring)."""

    def __init__(self, app: Flask, flask_wsgi: WSGIApp, svc: Services) -> None:
        self.flask = flask_wsgi  # the Flask app's own WSGI callable: everything else
        self._svc = svc
        self._limit = int(app.config["MAX_CONTENT_LENGTH"])
        self._urls = app.url_map.bind("localhost")  # matching needs only path and method
        self._matches: dict[tuple[str, str], Match] = {}
        self._metrics = RequestMetrics(svc.settings)
        self._gate = Gate(svc)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        # PEP 3333: the path's bytes as latin-1 text; read as UTF-8, as werkzeug does.
        path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
        method = environ.get("REQUEST_METHOD", "GET")
        found: Match | None
        try:
            found = self._matches[method, path]
        except KeyError:
            found = self._match(method, path)
            if found is not None and len(path) <= _CACHE_PATH:
                if len(self._matches) >= _CACHE_SIZE:
                    self._matches.clear()
                self._matches[method, path] = found
        if found is None:
            return self.flask(environ, start_response)
        return self._answer(environ, start_response, method, *found)

    def _match(self, method: str, path: str) -> Match | None:
        try:
            rule, params = self._urls.match(path, method, return_rule=True)
        except HTTPException:  # 404, 405 or a redirect: Flask answers it
            return None
        route = route_of(rule)
        if route is None or not route.fast or method not in route.methods:
            return None  # a Flask-only view, a route Flask serves, HEAD or OPTIONS
        return route, params

    def _answer(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        method: str,
        route: Route,
        params: Mapping[str, Any],
    ) -> Iterable[bytes]:
        svc = self._svc
        started = self._metrics.begin(params)
        owner: str | None = None
        rate_headers: Headers = ()
        ticket: Ticket | None = None
        try:
            if not route.open:
                owner, rate_headers, refusal, ticket = self._gate.admit(
                    environ, defer=route.counts_itself
                )
                if refusal is not None:
                    raise refusal
            call = make_call(environ, params, route.environ_headers, owner, self._limit, ticket)
            reply = route.handler(svc, call)
        except Exception as exc:  # noqa: BLE001 - answered as the app answers it (logged there)
            reply = error_reply(exc, self._limit)
        if ticket is not None:  # counted by the handler, or now: as if before it, like Flask
            try:
                rate_headers, refusal = self._gate.settle(ticket)
                if refusal is not None:
                    reply = error_reply(refusal, self._limit)
            except Exception as exc:  # noqa: BLE001 - as the app answers a failed check
                reply = error_reply(exc, self._limit)
        status, headers, data = encode(reply)
        headers.extend(rate_headers)
        start_response(_STATUS_LINES.get(status) or f"{status} Unknown", headers)
        self._metrics.finish(route.label, method, status, started)
        set_job_id(None)
        return [data]
