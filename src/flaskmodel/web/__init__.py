"""The web tier: ``create_app()`` is gunicorn's entry (``flaskmodel.web:create_app()``).

It imports no TensorFlow, pydicom or grpc: models run in the workers, and a test proves it.
"""

from __future__ import annotations

import logging

from flask import Flask

from flaskmodel.logs import configure_once
from flaskmodel.settings import Settings
from flaskmodel.web import (
    auth,
    errors,
    health,
    infer_v2,
    jobs,
    kv,
    legacy,
    metrics,
    openapi,
    predict_v1,
    series,
    ui,
)
from flaskmodel.web.fast_predict import FastPredict
from flaskmodel.web.json_provider import FastJSONProvider
from flaskmodel.web.services import init_services

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app; nothing connects until the first request."""
    settings = settings or Settings()
    configure_once(settings)
    app = Flask("flaskmodel")
    app.json = FastJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.web.max_request_bytes
    init_services(app, settings)
    register_blueprints(app)
    metrics.init_request_metrics(app)
    auth.init_auth(app)
    errors.register_error_handlers(app)
    app.wsgi_app = FastPredict(app, app.wsgi_app)  # type: ignore[method-assign]
    return app


def register_blueprints(app: Flask) -> None:
    for module in (health, jobs, kv, series, legacy, predict_v1, infer_v2, ui, openapi, metrics):
        app.register_blueprint(module.bp)
