"""The front door's HTTP app: STOW-RS and a health check, as a small Flask app.

Routes: ``POST /dicomweb/studies`` and ``POST /dicomweb/studies/<study_uid>`` (STOW-RS; the
answer is the DICOM JSON of ``flaskmodel.dicom.network.stow`` with 200/202/409), and
``GET /dicomweb/healthz`` (200). Every other answer is an error as the main web app writes
them: JSON ``{"error": message, "type": machine_name}`` with the error's status (400, 404, 405,
413, 415, 500, 503). ``create_gateway_app`` is the only place the app is built; its
collaborators (store, callback, limit) live in ``app.extensions``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from flaskmodel.dicom.network.store import InstanceStore, OnStored
from flaskmodel.dicom.network.stow import DICOM_JSON_MEDIA_TYPE, receive_stow
from flaskmodel.errors import FlaskModelError

logger = logging.getLogger(__name__)

bp = Blueprint("stow", __name__)

_EXTENSION = "flaskmodel.gateway"


@dataclass(frozen=True)
class GatewayContext:
    """What the routes need: where to store, whom to tell, how large a body may be."""

    store: InstanceStore
    on_stored: OnStored
    max_stow_bytes: int


def create_gateway_app(store: InstanceStore, on_stored: OnStored, *, max_stow_bytes: int) -> Flask:
    app = Flask(__name__)
    # Flask refuses a declared or streamed body over the limit too, when no waitress is in front.
    app.config["MAX_CONTENT_LENGTH"] = max_stow_bytes
    app.extensions[_EXTENSION] = GatewayContext(store, on_stored, max_stow_bytes)
    app.register_blueprint(bp)
    register_error_handlers(app)
    return app


@bp.get("/dicomweb/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.post("/dicomweb/studies")
@bp.post("/dicomweb/studies/<study_uid>")
def store_instances(study_uid: str | None = None) -> Response:
    context: GatewayContext = current_app.extensions[_EXTENSION]
    result = receive_stow(
        request.stream,
        content_type=request.headers.get("Content-Type"),
        content_length=request.content_length,
        store=context.store,
        on_stored=context.on_stored,
        max_bytes=context.max_stow_bytes,
        study_uid=study_uid,
    )
    response = jsonify(result.body)
    response.status_code = result.status
    response.mimetype = DICOM_JSON_MEDIA_TYPE
    return response


def error_response(status: int, message: str, type_: str) -> Response:
    response = jsonify({"error": message, "type": type_})
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(FlaskModelError)
    def _ours(exc: FlaskModelError) -> Response:
        if exc.status >= 500:
            logger.warning("%s: %s", exc.type, exc.message)
        return error_response(exc.status, exc.message, exc.type)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = exc.description or exc.name
        type_ = exc.name.lower().replace(" ", "_")
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"request body is larger than the limit of {limit} bytes"
            type_ = "payload_too_large"
        response = error_response(status, message, type_)
        allow = exc.get_response().headers.get("Allow")
        if status == 405 and allow:
            response.headers["Allow"] = allow
        return response

    @app.errorhandler(Exception)
    def _bug(exc: Exception) -> Response:
        logger.error("unhandled error", exc_info=exc)
        return error_response(500, "internal server error", "internal_error")
