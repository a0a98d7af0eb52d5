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

One worker sweeps at a time: a Redis lock with a TTL of a few sweep intervals elects it, and is
taken over when that worker dies. A short-lived marker per (job, attempt) keeps two sweepers that
overlap (a lock that expired under a stalled leader) from publishing the same orphan twice.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Iterable

import redis
from celery import Celery

from flaskmodel.jobs.admission import pending_key
from flaskmodel.jobs.broker import (
    TASK_RUN_JOBS,
    job_of_task,
    model_queue,
    publish_job,
    redis_queue_keys,
)
from flaskmodel.schemas import JobRequest, JobState
from flaskmodel.storage.redis import key

logger = logging.getLogger(__name__)

LOCK = key("sweeper")
# kombu's Redis transport: the hash of taken, unacknowledged messages (its per-priority queue
# lists are ``redis_queue_keys``).
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"  # tag -> when it was taken
SCAN_CHUNK = 500

# KEYS: lock. ARGV: owner, ttl ms. Take the lock, or keep it when we hold it already.
_HOLD = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
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


class OrphanSweeper:
    """Finds orphaned jobs and publishes them again; ``run`` loops until stopped."""

    def __init__(
        self,
        client: redis.Redis,
        celery: Celery,
        *,
        queue: str,
        interval: float,
        lease: float,
        owner: str,
    ) -> None:
        self._redis = client
        self._celery = celery
        self._queue = queue
        self._interval = interval
        self._lease = lease
        self._owner = owner
        self._hold = client.register_script(_HOLD)
        # Orphans seen in the previous sweep: job id -> what its record looked like then.
        self._suspects: dict[str, tuple[str, ...]] = {}

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self._interval):
            try:
                if self.lead():
                    self.sweep()
                else:
                    self._suspects.clear()
            except redis.RedisError as exc:
                logger.info("sweeper: Redis unavailable (%s); trying again next sweep", exc)
            except Exception:
                logger.exception("sweeper: sweep failed")

    def lead(self) -> bool:
        """Take or keep the sweeper lock; True while this process holds it."""
        ttl_ms = int(self._interval * 3 * 1000)
        return bool(self._hold(keys=[LOCK], args=[self._owner, ttl_ms]))

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
            pipe = self._redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(key("job", job_id), ["state", "attempts", "started_at", "chunk"])
            for job_id, (state, attempts, started, chunk) in zip(ids, pipe.execute(), strict=True):
                if state in (JobState.QUEUED.value, JobState.RUNNING.value):
                    found[job_id] = (model, (str(state), str(attempts), str(started), str(chunk)))
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
        raw = self._redis.hget(key("job", job_id), "request")
        request = JobRequest.model_validate_json(raw) if raw else None
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
    client: redis.Redis, celery: Celery, *, queue: str, interval: float, lease: float, owner: str
) -> threading.Event:
    """Run a sweeper in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    sweeper = OrphanSweeper(
        client, celery, queue=queue, interval=interval, lease=lease, owner=owner
    )
    thread = threading.Thread(target=sweeper.run, args=(stop,), name="flaskmodel-sweeper")
    thread.daemon = True
    thread.start()
    return stop
