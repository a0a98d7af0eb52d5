"""Every error becomes a JSON body ``{"error": ...}`` with the right status, mapped once here."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from flask import Flask, Response, jsonify
from kombu.exceptions import OperationalError
from redis import RedisError
from werkzeug.exceptions import HTTPException

from flaskmodel.errors import FlaskModelError
from flaskmodel.metrics import catalogue
from flaskmodel.metrics.recorder import RECORDER

logger = logging.getLogger(__name__)


def error_response(
    status: int, message: str, *, type_: str, headers: dict[str, str] | None = None
) -> Response:
    RECORDER.inc(catalogue.ERRORS, (type_, "web"))
    response = jsonify({"error": message, "type": type_})
    response.status_code = status
    response.headers.update(headers or {})
    return response


@dataclass(frozen=True)
class ErrorAnswer:
    """What an exception raised while answering becomes: status, body fields, extra headers."""

    status: int
    message: str
    type: str
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, str]:
        RECORDER.inc(catalogue.ERRORS, (self.type, "web"))
        return {"error": self.message, "type": self.type}


def error_answer(exc: Exception) -> ErrorAnswer:
    """The answer to ``exc`` (logged here): ours map to their status, Redis and broker errors to
    503, anything else to 500. Both the Flask app and ``fast_predict`` answer with it."""
    if isinstance(exc, FlaskModelError):
        if exc.status >= 500:
            logger.warning("%s: %s", exc.type, exc.message)
        headers = {}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="flaskmodel"'
        return ErrorAnswer(exc.status, exc.message, exc.type, headers)
    if isinstance(exc, RedisError):
        logger.warning("redis unavailable: %s", exc)
        message = "the job store (Redis) is unavailable; try again shortly"
        return ErrorAnswer(503, message, "service_unavailable", {"Retry-After": "2"})
    if isinstance(exc, OperationalError):
        logger.warning("broker unavailable: %s", exc)
        message = "the job queue is unavailable; try again shortly"
        return ErrorAnswer(503, message, "service_unavailable", {"Retry-After": "2"})
    logger.error("unhandled error", exc_info=exc)
    return ErrorAnswer(500, "internal server error", "internal_error")


def _respond(exc: Exception) -> Response:
    answer = error_answer(exc)
    return error_response(answer.status, answer.message, type_=answer.type, headers=answer.headers)


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(FlaskModelError, _respond)
    app.register_error_handler(RedisError, _respond)
    app.register_error_handler(OperationalError, _respond)

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

    app.register_error_handler(Exception, _respond)
