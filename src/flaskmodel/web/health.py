"""``/healthz`` (the process answers) and ``/readyz`` (Redis up, a worker ready with its models;
503 as soon as this web process is draining after SIGTERM)."""

from __future__ import annotations

from typing import Any

from redis import RedisError

from flaskmodel.web.call import Call, Reply
from flaskmodel.web.services import Services


def healthz(svc: Services, call: Call) -> Reply:
    return 200, {"status": "ok"}, {}


def readyz(svc: Services, call: Call) -> Reply:
    if svc.draining.is_set():
        draining = {"status": "draining", "redis": "unknown", "workers": [], "models": []}
        return 503, draining, {"Retry-After": "5"}
    try:
        svc.redis.ping()
        workers = svc.workers.live()
    except RedisError as exc:
        down = {"status": "unavailable", "redis": f"unreachable: {exc}", "workers": []}
        return 503, down, {"Retry-After": "2"}
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
        return 503, body, {"Retry-After": "5"}
    return 200, body, {}
