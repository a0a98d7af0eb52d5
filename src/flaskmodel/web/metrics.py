"""``GET /metrics`` (Prometheus text format) and the per-request bookkeeping that feeds it.

Every request is counted and timed under its route's label (the URL rule, ``/v1/jobs/<job_id>``,
never the raw path, so the number of series stays bounded; ``unmatched`` for paths no route has)
in this process's ``RECORDER``, which a background thread flushes to Redis. A scrape first
flushes this process's own counts, then renders the totals of every process
(``flaskmodel.web.exposition``). Both adapters of the route table (the Flask hooks and the fast
WSGI layer) call ``begin`` and ``finish`` around each request.

``begin`` also tags the request's log records with the job it is about (``/v1/jobs/<job_id>``,
``/get_result/<task_id>``); a submit tags them once the job has its id.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

import redis
from redis import RedisError

from flaskmodel.logs import set_job_id
from flaskmodel.metrics import catalogue
from flaskmodel.metrics.recorder import RECORDER
from flaskmodel.settings import Settings
from flaskmodel.storage.redis import connect
from flaskmodel.web.call import Call, Raw, Reply
from flaskmodel.web.exposition import CONTENT_TYPE, render
from flaskmodel.web.services import Services


def metrics(svc: Services, call: Call) -> Reply:
    with contextlib.suppress(RedisError):  # kept for the flusher; the render answers 503
        RECORDER.flush(svc.redis)  # this process's latest counts, not a flush interval old
    body = render(svc.redis, svc.workers, svc.settings.worker.queue)
    return 200, Raw(body, CONTENT_TYPE), {}


class RequestMetrics:
    """``begin``/``finish`` of every request of one app."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._target = settings.redis_url() if settings.redis.url else ""
        self._interval = settings.metrics.flush_seconds

    def _connect(self) -> redis.Redis:
        return connect(self._settings)

    def begin(self, params: Mapping[str, Any] | None) -> float:
        """Start of a request (``params``: its path parameters): this process's metrics
        flusher running, log records tagged with the job; the start time for ``finish``."""
        RECORDER.start(self._connect, self._interval, self._target)
        set_job_id(params.get("job_id") or params.get("task_id") if params else None)
        return time.perf_counter()

    def finish(self, label: str, method: str, status: int, started: float) -> None:
        labels = (label, method, str(status))
        RECORDER.inc(catalogue.HTTP_REQUESTS, labels)
        RECORDER.observe(catalogue.HTTP_DURATION, labels, time.perf_counter() - started)
