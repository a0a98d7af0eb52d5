"""``OrphanSweeper``: publishes again the accepted jobs that no broker message will ever run.

A job is accepted once its record exists and its id is in its model's admission set
(``flaskmodel:pending:<model>``, see ``admission``). From then on a broker message for it lives
either in the model's queue list or, once a worker has taken it, in kombu's ``unacked`` hash,
until the job has ended. Redis faults break that chain:

- kombu's Redis transport takes a message with ``BRPOP`` and records it in ``unacked`` with a
  second command; Redis dying between the two leaves the message in neither place and the job
  QUEUED with no attempt (seen under ``kill -9`` of Redis: its AOF holds the publish and the pop,
  then the restart).
- a message whose reject failed in an outage stays in ``unacked`` until kombu's
  visibility-timeout restore puts it back, and that restore stalled for minutes behind a lock the
  outage left behind (seen under SIGSTOP; see ``celery_app``). So a message unacknowledged for
  longer than the lease (``jobs.visibility_timeout``, itself longer than the hard time limit) no
  longer counts as live.
- a delivery acknowledged while its job could not record its end (a time limit hit while Redis
  was unreachable) leaves the job RUNNING with no message (guarded against in ``tasks`` too).

A job whose record is unfinished, whose message is in neither place, and which looked exactly
the same (state, attempts, start time) one sweep earlier is an orphan: it is published again under
its own id. Running it again is safe: the job's state moves through atomic transitions that let
exactly one result write take effect, and the attempt counter still bounds the deliveries.

Before that, each sweep puts back the messages of dead workers (``restore_unclaimed``). A message
a worker's main process took and never acknowledged stays in ``unacked`` when that process is
killed outright (``kill -9``, OOM killer, power): kombu puts it back only after the visibility
timeout (an hour by default), so its job would wait that long. Every main process lists the
deliveries it holds every heartbeat (``DeliveryClaims``); an ``unacked`` message of our queues
that no live main process lists, taken before every live one's latest list was made and at least
``grace`` seconds ago, belongs to no one: it goes back to the front of its queue at its priority,
as kombu's own ``restore_by_tag`` does, in one script that moves it only while it is still the
entry read (an acknowledgement meanwhile wins). Safe however clocks differ between hosts: a live
holder compares a message's take time with its own list's time, both stamped by its own clock.
After a Redis outage every claim may have expired: the sweeper restores nothing until its own
process's claims have been written without a failure for ``grace`` (longer than a heartbeat, so
every live worker has listed its deliveries again). A holder alive but cut off from Redis alone
for three heartbeats loses its claims and its job runs a second time; the job layer lets exactly
one result write take effect (as for a redelivery after the visibility timeout).

One worker sweeps at a time: a Redis lock with a TTL of a few sweep intervals elects it, and is
taken over when that worker dies (at once when its main process's claims have expired). A
short-lived marker per (job, attempt) keeps two sweepers that overlap (a lock that expired under a
stalled leader) from publishing the same orphan twice.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import redis
from celery import Celery

from flaskmodel.errors import JobNotFound
from flaskmodel.jobs.admission import pending_key
from flaskmodel.jobs.broker import (
    MAX_PRIORITY,
    TASK_RUN_JOBS,
    job_of_task,
    model_queue,
    publish_job,
    redis_queue_keys,
)
from flaskmodel.jobs.records import JobRecords
from flaskmodel.storage.redis import key
from flaskmodel.storage.workers import DeliveryClaims, held_key

logger = logging.getLogger(__name__)

LOCK = key("sweeper")
# kombu's Redis transport: the hash of taken, unacknowledged messages (its per-priority queue
# lists are ``redis_queue_keys``).
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"  # tag -> when it was taken
SCAN_CHUNK = 500

SEP = "\x06\x16"  # kombu's separator in a priority list's name (``redis_queue_keys``)
# Seconds between kombu recording a message as taken and Celery listing it as reserved (both in
# the main process's event loop, one after the other): a holder's list made less than this after
# a message was taken may not show it yet.
CLAIM_SLACK = 1.0

# KEYS: lock, prefix of the main processes' held-deliveries keys. ARGV: owner, ttl ms. Take the
# lock (free, ours already, or its owner's main process dead: its claims expired).
_HOLD = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] or redis.call('EXISTS', KEYS[2] .. cur) == 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: unacked hash, unacked index, the queue list. ARGV: delivery tag, the entry as read, the
# message to push. Moves the message back only while its entry is still the one read.
_RESTORE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[3])
return 1
"""


def message_ids(raw: str) -> list[str]:
    """The job ids of a kombu message as stored in a queue list (a chunk's task id names its
    job, ``<job>.<chunk>``; a ``run_jobs`` message carries its jobs' ids in its body)."""
    try:
        return payload_ids(json.loads(raw))
    except ValueError:
        return []


def unacked_ids(raw: str) -> list[str]:
    """The job ids of an ``unacked`` hash value (``[message, exchange, routing_key]``)."""
    try:
        entry = json.loads(raw)
    except ValueError:
        return []
    return payload_ids(entry[0]) if isinstance(entry, list) and entry else []


def payload_ids(payload: object) -> list[str]:
    headers = payload.get("headers") if isinstance(payload, dict) else None
    if not isinstance(headers, dict):
        return []
    if headers.get("task") == TASK_RUN_JOBS:
        assert isinstance(payload, dict)
        try:
            body = json.loads(base64.b64decode(payload["body"]))
            return [str(i) for i in body[0][0]]
        except (KeyError, IndexError, TypeError, ValueError):
            return []
    found = headers.get("id")
    return [job_of_task(found)] if isinstance(found, str) else []


def restored_message(entry: list[Any], base: str) -> tuple[str, str] | None:
    """The queue list an ``unacked`` entry (``[message, exchange, routing_key]``) goes back to and
    the message to push there, marked redelivered as kombu marks it; None for a message of another
    queue than ours (``base`` or ``base.<model>``) or another exchange than the default one."""
    message, exchange, routing_key = entry
    if exchange or not isinstance(routing_key, str) or not isinstance(message, dict):
        return None
    if routing_key != base and not routing_key.startswith(base + "."):
        return None
    message.setdefault("headers", {})["redelivered"] = True
    properties = message.setdefault("properties", {})
    properties.setdefault("delivery_info", {})["redelivered"] = True
    try:
        priority = min(max(int(properties.get("priority") or 0), 0), MAX_PRIORITY - 1)
    except (TypeError, ValueError):
        priority = 0
    return redis_queue_keys(routing_key)[priority], json.dumps(message)


class OrphanSweeper:
    """Finds orphaned jobs and publishes them again; ``run`` loops until stopped.

    ``restore_grace``: restore the unclaimed messages of dead workers taken at least this many
    seconds ago (None: leave them to the visibility timeout)."""

    def __init__(
        self,
        client: redis.Redis,
        celery: Celery,
        *,
        queue: str,
        interval: float,
        lease: float,
        owner: str,
        restore_grace: float | None = None,
    ) -> None:
        self._redis = client
        self._jobs = JobRecords(client)
        self._claims = DeliveryClaims(client)
        self._celery = celery
        self._queue = queue
        self._interval = interval
        self._lease = lease
        self._owner = owner
        self._restore_grace = restore_grace
        self._hold = client.register_script(_HOLD)
        self._restore = client.register_script(_RESTORE)
        # Orphans seen in the previous sweep: job id -> what its record looked like then.
        self._suspects: dict[str, tuple[str, ...]] = {}

    def run(self, stop: threading.Event) -> None:
        while True:  # a first pass at once: a restarted worker restores its predecessor's work
            try:
                if self.lead():
                    self.restore_unclaimed()
                    self.sweep()
                else:
                    self._suspects.clear()
            except redis.RedisError as exc:
                logger.info("sweeper: Redis unavailable (%s); trying again next sweep", exc)
            except Exception:
                logger.exception("sweeper: sweep failed")
            if stop.wait(self._interval):
                return

    def lead(self) -> bool:
        """Take or keep the sweeper lock; True while this process holds it."""
        ttl_ms = int(self._interval * 3 * 1000)
        return bool(self._hold(keys=[LOCK, held_key("")], args=[self._owner, ttl_ms]))

    def restore_unclaimed(self) -> list[str]:
        """Put the messages no live worker holds back in their queues; returns their job ids."""
        if self._restore_grace is None:
            return []
        now = time.time()
        holders = self._claims.live()
        own = [h for h in holders if h.holder == self._owner]
        if not own or own[0].since > now - self._restore_grace:
            # Redis was out of our reach within the grace: other workers' claims may have expired
            # in the outage and not be written again yet.
            return []
        claimed = frozenset().union(*(h.tags for h in holders))
        taken_before = min(min(h.sent_at for h in holders) - CLAIM_SLACK, now - self._restore_grace)
        restored: list[str] = []
        candidates = self._redis.zrangebyscore(
            UNACKED_INDEX, "-inf", f"({taken_before}", start=0, num=SCAN_CHUNK
        )
        for tag in (str(t) for t in candidates):
            if tag in claimed:
                continue
            raw = self._redis.hget(UNACKED, tag)
            if raw is None:
                continue  # acknowledged meanwhile
            try:
                entry = json.loads(raw)
                target = restored_message(entry, self._queue)
            except (ValueError, TypeError, AttributeError):
                target = None
            if target is None:
                continue  # not one of our job messages: kombu's visibility timeout handles it
            queue_list, message = target
            if self._restore(keys=[UNACKED, UNACKED_INDEX, queue_list], args=[tag, raw, message]):
                ids = unacked_ids(str(raw))
                restored += ids
                logger.warning(
                    "sweeper: message %s (jobs %s) was taken by a worker that no longer holds "
                    "it; put back in %s",
                    tag,
                    ",".join(ids),
                    queue_list.split(SEP, 1)[0],
                )
        return restored

    def sweep(self) -> list[str]:
        """One sweep; returns the ids of the jobs published again."""
        unfinished = self._unfinished()
        if not unfinished:
            self._suspects.clear()
            return []
        live = self._live_messages(unfinished)
        orphans: dict[str, tuple[str, ...]] = {}
        for job_id, (model, fingerprint) in unfinished.items():
            if job_id not in live:
                orphans[job_id] = (model, *fingerprint)
        republished = []
        for job_id, seen in orphans.items():
            if self._suspects.get(job_id) == seen and self._republish(job_id, seen):
                republished.append(job_id)
        self._suspects = {i: s for i, s in orphans.items() if i not in republished}
        return republished

    def _unfinished(self) -> dict[str, tuple[str, tuple[str, str, str, str]]]:
        """Unfinished jobs of every model: id -> (model, (state, attempts, started_at, chunk))."""
        found: dict[str, tuple[str, tuple[str, str, str, str]]] = {}
        prefix = pending_key("")
        for name in self._redis.scan_iter(match=prefix + "*", count=100):
            model = str(name).removeprefix(prefix)
            ids = [str(i) for i in self._redis.zrange(str(name), 0, -1)]
            for job_id, fingerprint in self._jobs.unfinished(ids).items():
                found[job_id] = (model, fingerprint)
        return found

    def _live_messages(
        self, unfinished: dict[str, tuple[str, tuple[str, str, str, str]]]
    ) -> set[str]:
        """Job ids that have a message waiting in a queue, or taken and not acknowledged for less
        than the broker lease (kombu puts an older one back in its queue: one still unacked
        then, its restore stalled, counts as lost)."""
        live: set[str] = set()
        stale_before = time.time() - self._lease - 2 * self._interval
        taken = list(self._redis.hscan_iter(UNACKED, count=SCAN_CHUNK))
        pipe = self._redis.pipeline(transaction=False)
        for tag, _ in taken:
            pipe.zscore(UNACKED_INDEX, tag)
        for (_, raw), since in zip(taken, pipe.execute(), strict=True):
            if since is None or float(since) >= stale_before:
                live.update(unacked_ids(str(raw)))
        models = {model for model, _ in unfinished.values()}
        for name in self._queue_lists(models):
            live.update(self._list_ids(name))
        return live

    def _queue_lists(self, models: Iterable[str]) -> list[str]:
        return [n for m in sorted(models) for n in redis_queue_keys(model_queue(self._queue, m))]

    def _list_ids(self, name: str) -> set[str]:
        ids: set[str] = set()
        start = 0
        while True:
            chunk = self._redis.lrange(name, start, start + SCAN_CHUNK - 1)
            for raw in chunk:
                ids.update(message_ids(str(raw)))
            if len(chunk) < SCAN_CHUNK:
                return ids
            start += SCAN_CHUNK

    def _republish(self, job_id: str, seen: tuple[str, ...]) -> bool:
        model, state, attempts, chunk = seen[0], seen[1], seen[2], seen[4]
        marker = key("swept", job_id, chunk, attempts)
        if not self._redis.set(marker, self._owner, nx=True, ex=max(1, int(self._interval * 5))):
            return False
        try:
            request = self._jobs.request(job_id)
        except JobNotFound:
            request = None  # expired meanwhile: published at the default priority, then skipped
        settings = getattr(self._celery, "flaskmodel_settings", None)
        default = settings.jobs.default_priority if settings is not None else 5
        # The chunk the job is at (0 for tensor jobs), at its own priority.
        publish_job(
            self._celery,
            job_id,
            model,
            queue=self._queue,
            priority=(request.priority if request else None) or default,
            chunk=int(chunk) if chunk.isdigit() else 0,
        )
        logger.warning(
            "sweeper: job %s was %s (attempts %s) with no broker message; published again",
            job_id,
            state,
            attempts,
        )
        return True


def start_sweeper(
    client: redis.Redis,
    celery: Celery,
    *,
    queue: str,
    interval: float,
    lease: float,
    owner: str,
    restore_grace: float | None = None,
) -> threading.Event:
    """Run a sweeper in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    sweeper = OrphanSweeper(
        client,
        celery,
        queue=queue,
        interval=interval,
        lease=lease,
        owner=owner,
        restore_grace=restore_grace,
    )
    thread = threading.Thread(target=sweeper.run, args=(stop,), name="flaskmodel-sweeper")
    thread.daemon = True
    thread.start()
    return stop
