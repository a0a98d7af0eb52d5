"""Every error becomes a JSON body ``{"error": ..., "type": ...}`` with the right status, mapped
once here for both adapters of the route table (the Flask app's error handlers and the fast
WSGI layer answer with ``error_reply``)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from kombu.exceptions import OperationalError
from redis import RedisError
from werkzeug.exceptions import HTTPException

from flaskmodel.errors import FlaskModelError
from flaskmodel.metrics import catalogue
from flaskmodel.metrics.recorder import RECORDER
from flaskmodel.web.call import Reply

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErrorAnswer:
    """What an exception raised while answering becomes: status, body fields, extra headers."""

    status: int
    message: str
    type: str
    headers: dict[str, str] = field(default_factory=dict)


def error_reply(exc: Exception, limit: int) -> Reply:
    """The reply to ``exc`` (``limit``: the body size past which a 413 was raised), counted in
    ``flaskmodel_errors_total``."""
    answer = error_answer(exc, limit)
    RECORDER.inc(catalogue.ERRORS, (answer.type, "web"))
    return answer.status, {"error": answer.message, "type": answer.type}, answer.headers


def error_answer(exc: Exception, limit: int) -> ErrorAnswer:
    """The answer to ``exc`` (logged here): ours map to their status, werkzeug's HTTP errors
    (404, 405, 413) keep theirs, Redis and broker errors are 503, anything else is 500."""
    if isinstance(exc, FlaskModelError):
        if exc.status >= 500:
            logger.warning("%s: %s", exc.type, exc.message)
        headers = {}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="flaskmodel"'
        return ErrorAnswer(exc.status, exc.message, exc.type, headers)
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            message = f"request body is larger than the limit of {limit} bytes"
        headers = {}
        allow = exc.get_response().headers.get("Allow") if status == 405 else None
        if allow:
            headers["Allow"] = allow
        return ErrorAnswer(status, message, exc.name.lower().replace(" ", "_"), headers)
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
