"""Worker heartbeats: which worker processes are up, and which models each has loaded and warm.
(``ModelCatalog`` is the cache of what they advertise; this module reads and writes them.)

Each worker process writes ``flaskmodel:worker:<id>`` (JSON ``WorkerHeartbeat``, TTL three
heartbeats) and scores its id in the ``flaskmodel:workers`` sorted set by expiry time. Readers take
the ids whose expiry is in the future; stale ids are pruned on read. Both keys expire on their own.

Draining: a Celery main process that starts shutting down sets ``flaskmodel:draining:<host>:<pid>``
(``drain``) and rewrites its pool children's heartbeats as draining and not ready at once; every
later heartbeat of a process whose own or parent's drain key exists says the same, so ``/readyz``
and admission stop counting the worker while it finishes its in-flight jobs.

Held deliveries (Redis broker): each Celery main process (``<host>:<pid>``) writes
``flaskmodel:held:<host>:<pid>`` (JSON ``HeldDeliveries``: the broker delivery tags it holds,
reserved or running, as of ``sent_at``, and since when its writes have all succeeded; TTL three
heartbeats) and scores itself in
``flaskmodel:holders`` the same way. The orphan sweeper puts back a message taken and never
acknowledged once no live main process holds it (``sweeper``); the key's existence also says that
main process is alive (the sweeper lock of a dead one is taken over at once).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from typing import NamedTuple

import redis

from flaskmodel.schemas import WorkerHeartbeat
from flaskmodel.storage.redis import key

INDEX = key("workers")
HOLDERS = key("holders")

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
        """The live workers' heartbeats, read now (one round trip). A heartbeat read before
        unchanged is not parsed again (they change at heartbeat pace), so unchanged heartbeats
        come back as the same objects (``ModelCatalog`` keeps its merged adverts by that)."""
        raws = self._live(keys=[INDEX, key("worker", "")], args=[time.time()])
        parsed = self._parsed
        self._parsed = {r: parsed.get(r) or WorkerHeartbeat.model_validate_json(r) for r in raws}
        return list(self._parsed.values())


def held_key(holder: str) -> str:
    """The key of the deliveries one Celery main process (``<host>:<pid>``) holds."""
    return key("held", holder)


class HeldDeliveries(NamedTuple):
    """What one Celery main process held as of ``sent_at`` (its clock); ``since``: when the run of
    its writes without a failure began (Redis reachable from it, every heartbeat, since then)."""

    holder: str
    sent_at: float
    since: float
    tags: frozenset[str]


class DeliveryClaims:
    """Reads and writes the broker deliveries that live worker main processes hold."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._live = client.register_script(_LIVE)

    def publish(
        self, holder: str, tags: Iterable[str], *, sent_at: float, since: float, ttl: float
    ) -> None:
        """Say that ``holder`` held ``tags`` at ``sent_at`` (read before the tags were)."""
        body = json.dumps(
            {"holder": holder, "sent_at": sent_at, "since": since, "tags": sorted(tags)}
        )
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(held_key(holder), body, px=int(ttl * 1000))
        pipe.zadd(HOLDERS, {holder: time.time() + ttl})
        pipe.expire(HOLDERS, int(ttl) + 1)
        pipe.execute()

    def live(self) -> list[HeldDeliveries]:
        """The latest claims of every main process whose claims have not expired."""
        found = []
        for raw in self._live(keys=[HOLDERS, held_key("")], args=[time.time()]):
            body = json.loads(raw)
            sent_at = float(body["sent_at"])
            found.append(
                HeldDeliveries(
                    str(body["holder"]),
                    sent_at,
                    float(body.get("since", sent_at)),
                    frozenset(body["tags"]),
                )
            )
        return found
