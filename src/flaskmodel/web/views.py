"""The Flask side of the route table: one view per endpoint of ``web.routes``, the request hooks
(metrics, API keys and rate limits) and the error handlers, each a thin adapter around the code
the fast WSGI layer calls too (``make_call``/``encode``, ``RequestMetrics``, ``Gate``,
``error_reply``).

Every request Flask serves goes through the hooks, the Flask-only views and unknown paths
included: ``before_request`` starts the metrics and checks the caller (unless its route is open),
``after_request`` adds the caller's rate-limit header fields (after the reply's own, as the fast
layer does) and counts and times the answer under its route's label (``unmatched`` when no rule
matched).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, Response, g, request
from kombu.exceptions import OperationalError
from redis import RedisError
from werkzeug.exceptions import HTTPException

from flaskmodel.errors import FlaskModelError
from flaskmodel.web.auth import OPEN_ENDPOINTS, Gate
from flaskmodel.web.call import Reply, encode, make_call
from flaskmodel.web.errors import error_reply
from flaskmodel.web.metrics import RequestMetrics
from flaskmodel.web.routes import ROUTES, route_of
from flaskmodel.web.services import Services


def respond(reply: Reply) -> Response:
    """A Flask response of exactly the bytes and headers the fast layer sends for ``reply``."""
    status, headers, data = encode(reply)
    return Response(data, status=status, headers=headers)


def register_routes(app: Flask, svc: Services, limit: int) -> None:
    """Add every route of the table to ``app`` (``limit``: the most body bytes read)."""
    views: dict[str, Callable[..., Response]] = {}
    for route in ROUTES:
        view = views.get(route.endpoint)
        if view is None:  # rows sharing an endpoint (``[/versions/<v>]``) share its view
            view = views[route.endpoint] = _view(route.handler, svc, limit)
        app.add_url_rule(route.rule, route.endpoint, view, methods=route.methods, route=route)


def _view(handler: Callable[..., Reply], svc: Services, limit: int) -> Callable[..., Response]:
    def view(**params: Any) -> Response:
        route = route_of(request.url_rule)
        assert route is not None  # only table rules lead here
        call = make_call(request.environ, params, route.environ_headers, g.get("owner"), limit)
        return respond(handler(svc, call))

    view.__name__ = handler.__name__
    return view


def init_hooks(app: Flask, svc: Services) -> None:
    """Metrics of every request, and the caller checked before it is answered."""
    tracked = RequestMetrics(svc.settings)
    gate = Gate(svc)

    @app.before_request
    def _begin() -> None:
        g.flaskmodel_started = tracked.begin(request.view_args)
        route = route_of(request.url_rule)
        if route.open if route is not None else request.endpoint in OPEN_ENDPOINTS:
            return
        admission = gate.admit(request.environ)
        g.owner, g.rate_headers = admission.owner, admission.headers
        if admission.refusal is not None:
            raise admission.refusal

    @app.after_request
    def _finish(response: Response) -> Response:
        rate_headers = g.get("rate_headers")
        if rate_headers:
            response.headers.extend(rate_headers)
        started = g.get("flaskmodel_started")
        if started is not None:
            rule = request.url_rule
            route = route_of(rule)
            label = route.label if route else rule.rule if rule else "unmatched"
            tracked.finish(label, request.method, response.status_code, started)
        return response


def register_error_handlers(app: Flask, limit: int) -> None:
    def _respond(exc: Exception) -> Response:
        return respond(error_reply(exc, limit))

    for kind in (FlaskModelError, RedisError, OperationalError, HTTPException, Exception):
        app.register_error_handler(kind, _respond)
