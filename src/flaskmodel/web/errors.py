"""Every error becomes a JSON body ``{"error": ...}`` with the right status, mapped once here."""

from __future__ import annotations

import logging
import math

from flask import Flask, Response, jsonify
from kombu.exceptions import OperationalError
from redis import RedisError
from werkzeug.exceptions import HTTPException

from flaskmodel.errors import FlaskModelError
from flaskmodel.metrics import catalogue
from flaskmodel.metrics.recorder import RECORDER

logger = logging.getLogger(__name__)


def error_response(
    status: int, message: str, *, type_: str, retry_after: float | None = None
) -> Response:
    RECORDER.inc(catalogue.ERRORS, (type_, "web"))
    response = jsonify({"error": message, "type": type_})
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(FlaskModelError)
    def _ours(exc: FlaskModelError) -> Response:
        if exc.status >= 500:
            logger.warning("%s: %s", exc.type, exc.message)
        response = error_response(
            exc.status, exc.message, type_=exc.type, retry_after=exc.retry_after
        )
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="flaskmodel"'
        return response

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"request body is larger than the limit of {limit} bytes"
        response = error_response(status, message, type_=exc.name.lower().replace(" ", "_"))
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(RedisError)
    def _redis(exc: RedisError) -> Response:
        logger.warning("redis unavailable: %s", exc)
        return error_response(
            503,
            "the job store (Redis) is unavailable; try again shortly",
            type_="service_unavailable",
            retry_after=2,
        )

    @app.errorhandler(OperationalError)
    def _broker(exc: OperationalError) -> Response:
        logger.warning("broker unavailable: %s", exc)
        return error_response(
            503,
            "the job queue is unavailable; try again shortly",
            type_="service_unavailable",
            retry_after=2,
        )

    @app.errorhandler(Exception)
    def _bug(exc: Exception) -> Response:
        logger.exception("unhandled error")
        return error_response(500, "internal server error", type_="internal_error")
