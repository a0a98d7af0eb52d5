"""``GET /metrics`` (Prometheus text format) and the per-request hooks that feed it.

Every request is counted and timed by its URL rule (``/v1/jobs/<job_id>``, never the raw path,
so the number of series stays bounded; ``unmatched`` for paths no route has) in this process's
``RECORDER``, which a background greenlet flushes to Redis. A scrape first flushes this process's
own counts, then renders the totals of every process (``flaskmodel.web.exposition``).

The hooks also tag the request's log records with the job it is about (``/v1/jobs/<job_id>``,
``/get_result/<task_id>``); a submit tags them once the job has its id.
"""

from __future__ import annotations

import contextlib
import logging
import time

from flask import Blueprint, Flask, Response, g, request
from redis import RedisError

from flaskmodel.logs import set_job_id
from flaskmodel.metrics import catalogue
from flaskmodel.metrics.recorder import RECORDER
from flaskmodel.storage.redis import connect
from flaskmodel.web.exposition import CONTENT_TYPE, render
from flaskmodel.web.services import services

logger = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    svc = services()
    with contextlib.suppress(RedisError):  # kept for the flusher; the render answers 503
        RECORDER.flush(svc.redis)  # this process's latest counts, not a flush interval old
    body = render(svc.redis, svc.workers, svc.settings.worker.queue)
    return Response(body, content_type=CONTENT_TYPE)


def init_request_metrics(app: Flask) -> None:
    """Time and count every request of ``app`` (and start this process's metrics flusher)."""
    settings = app.extensions["flaskmodel"].settings
    target = settings.redis_url() if settings.redis.url else ""

    @app.before_request
    def _started() -> None:
        g.flaskmodel_started = time.perf_counter()
        RECORDER.start(lambda: connect(settings), settings.metrics.flush_seconds, target)
        args = request.view_args
        set_job_id(args.get("job_id") or args.get("task_id") if args else None)

    @app.after_request
    def _finished(response: Response) -> Response:
        started = g.get("flaskmodel_started")
        if started is not None:
            rule = request.url_rule
            labels = (
                rule.rule if rule is not None else "unmatched",
                request.method,
                str(response.status_code),
            )
            RECORDER.inc(catalogue.HTTP_REQUESTS, labels)
            RECORDER.observe(catalogue.HTTP_DURATION, labels, time.perf_counter() - started)
        return response
