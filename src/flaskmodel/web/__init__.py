"""The web tier: ``create_app()`` is gunicorn's entry (``flaskmodel.web:create_app()``).

The API's routes are one table (``web.routes``) of handlers that know no web framework; the
Flask app serves all of them (``web.views``) and a WSGI layer in front of it
(``web.fast_routes``) answers the hot ones with the same code, without Flask's per-request
machinery. It imports no TensorFlow, pydicom or grpc: models run in the workers, and a test
proves it.
"""

from __future__ import annotations

from flask import Flask

from flaskmodel.logs import configure_once
from flaskmodel.settings import Settings
from flaskmodel.web import openapi, ui, views
from flaskmodel.web.fast_routes import FastRoutes
from flaskmodel.web.json_provider import FastJSONProvider
from flaskmodel.web.routes import RouteRule
from flaskmodel.web.services import build_services


class App(Flask):
    """Flask, its ``url_map`` rules knowing their route table rows."""

    url_rule_class = RouteRule


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app; nothing connects until the first request."""
    settings = settings or Settings()
    configure_once(settings)
    app = App("flaskmodel")
    app.json = FastJSONProvider(app)
    limit = settings.web.max_request_bytes
    app.config["MAX_CONTENT_LENGTH"] = limit
    svc = app.extensions["flaskmodel"] = build_services(settings)
    views.register_routes(app, svc, limit)
    app.register_blueprint(ui.bp)
    app.register_blueprint(openapi.bp)
    views.init_hooks(app, svc)
    views.register_error_handlers(app, limit)
    app.wsgi_app = FastRoutes(app, app.wsgi_app, svc)  # type: ignore[method-assign]
    return app
