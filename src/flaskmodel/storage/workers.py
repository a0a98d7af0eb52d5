"""Worker heartbeats: which worker processes are up, and which models each has loaded and warm.

Each worker process writes ``flaskmodel:worker:<id>`` (JSON ``WorkerHeartbeat``, TTL three
heartbeats) and scores its id in the ``flaskmodel:workers`` sorted set by expiry time. Readers take
the ids whose expiry is in the future; stale ids are pruned on read. Both keys expire on their own.
"""

from __future__ import annotations

import logging
import time

import redis

from flaskmodel.schemas import ModelAdvert, WorkerHeartbeat
from flaskmodel.storage.redis import key

logger = logging.getLogger(__name__)

INDEX = key("workers")


class WorkerRegistry:
    """Reads and writes worker heartbeats."""

    def __init__(self, client: redis.Redis, *, ttl: float) -> None:
        self._redis = client
        self._ttl = ttl

    def beat(self, heartbeat: WorkerHeartbeat) -> None:
        expires = time.time() + self._ttl
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(
            key("worker", heartbeat.worker_id),
            heartbeat.model_dump_json(),
            px=int(self._ttl * 1000),
        )
        pipe.zadd(INDEX, {heartbeat.worker_id: expires})
        pipe.expire(INDEX, int(self._ttl) + 1)
        pipe.execute()

    def remove(self, worker_id: str) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(key("worker", worker_id))
        pipe.zrem(INDEX, worker_id)
        pipe.execute()

    def live(self) -> list[WorkerHeartbeat]:
        now = time.time()
        pipe = self._redis.pipeline(transaction=False)
        pipe.zremrangebyscore(INDEX, "-inf", now)
        pipe.zrangebyscore(INDEX, now, "+inf")
        _, ids = pipe.execute()
        if not ids:
            return []
        raws = self._redis.mget([key("worker", i) for i in ids])
        return [WorkerHeartbeat.model_validate_json(r) for r in raws if r]

    def model(self, name: str) -> ModelAdvert | None:
        """The model as served by the ready workers (versions merged), or None if none serves it."""
        merged: ModelAdvert | None = None
        for beat in self.live():
            advert = beat.models.get(name) if beat.ready else None
            if advert is None:
                continue
            if merged is None:
                merged = advert.model_copy(deep=True)
                continue
            for version, spec in advert.specs.items():
                merged.specs.setdefault(version, spec)
            merged.versions = sorted(set(merged.versions) | set(advert.versions))
            merged.latest = max(merged.latest, advert.latest)
        return merged
