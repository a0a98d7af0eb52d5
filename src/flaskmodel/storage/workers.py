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
import math
import os
import time

import redis

from flaskmodel.schemas import ModelAdvert, WorkerHeartbeat
from flaskmodel.storage.redis import key

logger = logging.getLogger(__name__)

INDEX = key("workers")

# KEYS: the index, the heartbeat key prefix. ARGV: now. Prunes expired ids, returns the live
# heartbeats (one round trip).
_LIVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')
local beats = {}
for _, id in ipairs(ids) do
  local raw = redis.call('GET', KEYS[2] .. id)
  if raw then table.insert(beats, raw) end
end
return beats
"""


def drain_key(hostname: str, pid: int) -> str:
    return key("draining", f"{hostname}:{pid}")


class WorkerRegistry:
    """Reads and writes worker heartbeats."""

    def __init__(self, client: redis.Redis, *, ttl: float) -> None:
        self._redis = client
        self._ttl = ttl
        self._live = client.register_script(_LIVE)
        self._parsed: dict[str, WorkerHeartbeat] = {}
        self._snapshot: list[WorkerHeartbeat] = []
        self._read_at = -math.inf  # time.monotonic() of the last read
        # model name -> (the heartbeats it was merged from, the merged advert)
        self._merged: dict[str, tuple[list[WorkerHeartbeat], ModelAdvert | None]] = {}

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

    def live(self, *, max_age: float = 0.0) -> list[WorkerHeartbeat]:
        """The live workers' heartbeats. A heartbeat read before unchanged is not parsed again
        (they change at heartbeat pace). ``max_age``: the last snapshot will do if it was read at
        most this many seconds ago (every read refreshes it)."""
        if max_age > 0 and time.monotonic() - self._read_at <= max_age:
            return self._snapshot
        read_at = time.monotonic()
        raws = self._live(keys=[INDEX, key("worker", "")], args=[time.time()])
        parsed = self._parsed
        self._parsed = {r: parsed.get(r) or WorkerHeartbeat.model_validate_json(r) for r in raws}
        self._snapshot, self._read_at = list(self._parsed.values()), read_at
        return self._snapshot

    def model(self, name: str, beats: list[WorkerHeartbeat] | None = None) -> ModelAdvert | None:
        """The model as served by the ready workers, or None if none serves it.

        Versions, specs and states are merged (a version is AVAILABLE where any worker serves
        it, else LOADING where any loads it, else END). ``latest`` — the default version — is the
        highest version every one of those workers has warm, so a new version becomes the
        default only once all of them have loaded it. ``beats``: a snapshot from ``live()``."""
        beats = self.live() if beats is None else beats
        last = self._merged.get(name)
        if (
            last is not None
            and len(last[0]) == len(beats)
            and all(a is b for a, b in zip(last[0], beats, strict=True))
        ):
            return last[1]  # the same heartbeats as last time: the same merge
        merged = self._merge(name, beats)
        self._merged[name] = (beats, merged)
        return merged

    @staticmethod
    def _merge(name: str, beats: list[WorkerHeartbeat]) -> ModelAdvert | None:
        adverts = [beat.models[name] for beat in beats if beat.ready and name in beat.models]
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
