"""Worker heartbeats: which worker processes are up, and which models each has loaded and warm.

Each worker process writes ``flaskmodel:worker:<id>`` (JSON ``WorkerHeartbeat``, TTL three
heartbeats) and scores its id in the ``flaskmodel:workers`` sorted set by expiry time. Readers take
the ids whose expiry is in the future; stale ids are pruned on read. Both keys expire on their own.

Draining: a Celery main process that starts shutting down sets ``flaskmodel:draining:<host>:<pid>``
(``drain``) and rewrites its pool children's heartbeats as draining and not ready at once; every
later heartbeat of a process whose own or parent's drain key exists says the same, so ``/readyz``
and admission stop counting the worker while it finishes its in-flight jobs.
"""

from __future__ import annotations

import logging
import os
import time

import redis

from flaskmodel.schemas import ModelAdvert, WorkerHeartbeat
from flaskmodel.storage.redis import key

logger = logging.getLogger(__name__)

INDEX = key("workers")


def drain_key(hostname: str, pid: int) -> str:
    return key("draining", f"{hostname}:{pid}")


class WorkerRegistry:
    """Reads and writes worker heartbeats."""

    def __init__(self, client: redis.Redis, *, ttl: float) -> None:
        self._redis = client
        self._ttl = ttl

    def beat(self, heartbeat: WorkerHeartbeat) -> None:
        parent = os.getppid()
        draining = bool(
            self._redis.exists(
                drain_key(heartbeat.hostname, heartbeat.pid), drain_key(heartbeat.hostname, parent)
            )
        )
        heartbeat = heartbeat.model_copy(
            update={
                "parent_pid": parent,
                "draining": draining,
                "ready": heartbeat.ready and not draining,
            }
        )
        self._write(heartbeat)

    def drain(self, hostname: str, pid: int, *, ttl: int) -> int:
        """Mark the worker ``pid`` (a Celery main process) and its pool children draining;
        returns how many live heartbeats were rewritten."""
        self._redis.set(drain_key(hostname, pid), "1", ex=ttl)
        changed = 0
        for beat in self.live():
            if beat.hostname == hostname and pid in (beat.pid, beat.parent_pid):
                self._write(beat.model_copy(update={"draining": True, "ready": False}))
                changed += 1
        return changed

    def _write(self, heartbeat: WorkerHeartbeat) -> None:
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

    def model(self, name: str, beats: list[WorkerHeartbeat] | None = None) -> ModelAdvert | None:
        """The model as served by the ready workers, or None if none serves it.

        Versions, specs and states are merged (a version is AVAILABLE where any worker serves
        it, else LOADING where any loads it, else END). ``latest`` — the default version — is the
        highest version every one of those workers has warm, so a new version becomes the
        default only once all of them have loaded it. ``beats``: a snapshot from ``live()``."""
        adverts = [
            beat.models[name]
            for beat in (self.live() if beats is None else beats)
            if beat.ready and name in beat.models
        ]
        if not adverts:
            return None
        merged = adverts[0].model_copy(deep=True)
        everywhere = set(merged.versions)
        for advert in adverts[1:]:
            for version, spec in advert.specs.items():
                merged.specs.setdefault(version, spec)
            merged.versions = sorted(set(merged.versions) | set(advert.versions))
            everywhere &= set(advert.versions)
            for version, state in advert.states.items():
                merged.states[version] = _merge_state(merged.states.get(version), state)
        # Disjoint versions (a worker lagging far behind): the oldest worker's newest is safe.
        merged.latest = max(everywhere) if everywhere else min(a.latest for a in adverts)
        return merged


_STATE_RANK = {"AVAILABLE": 3, "LOADING": 2, "END": 1}


def _merge_state(mine: str | None, theirs: str) -> str:
    if mine is None:
        return theirs
    return max(mine, theirs, key=lambda state: _STATE_RANK.get(state, 0))
