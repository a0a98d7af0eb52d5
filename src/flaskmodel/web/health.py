"""``/healthz`` (the process answers) and ``/readyz`` (Redis up, a worker ready with its models;
503 as soon as this web process is draining after SIGTERM)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint
from redis import RedisError

from flaskmodel.web.services import services

logger = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> tuple[dict[str, Any], int, dict[str, str]]:
    svc = services()
    if svc.draining.is_set():
        draining = {"status": "draining", "redis": "unknown", "workers": [], "models": []}
        return draining, 503, {"Retry-After": "5"}
    try:
        svc.redis.ping()
        workers = svc.workers.live()
    except RedisError as exc:
        down = {"status": "unavailable", "redis": f"unreachable: {exc}", "workers": []}
        return down, 503, {"Retry-After": "2"}
    ready = [w for w in workers if w.ready]
    models = sorted({name for w in ready for name in w.models})
    body: dict[str, Any] = {
        "status": "ready" if ready else "unavailable",
        "redis": "ok",
        "workers": [
            {
                "id": w.worker_id,
                "ready": w.ready,
                "draining": w.draining,
                "models": sorted(w.models),
                "errors": w.errors,
            }
            for w in workers
        ],
        "models": models,
    }
    if not ready:
        return body, 503, {"Retry-After": "5"}
    return body, 200, {}
