"""Hooks of the Celery main process: the hard time limit, draining on shutdown, start-up checks.

- A job killed by the hard time limit (``jobs.time_limit``) is acknowledged by Celery and its pool
  process replaced; the main process then marks the job FAILED (timeout) here, so it is neither
  left RUNNING forever nor redelivered: one execution. (Only when its current delivery has run
  that long: a timer left over from a delivery whose process died is ignored.)
- On shutdown (SIGTERM: warm, running jobs finish) the worker's heartbeats say draining at once,
  so ``/readyz`` answers 503 and submits stop counting on it while it finishes its jobs.
- From its start the main process lists, every heartbeat, the broker deliveries it holds
  (reserved or running, ``DeliveryClaims``) until it exits, warm shutdown included: the sweeper
  puts back in their queues the unacknowledged messages no live main process lists (those of a
  worker killed outright). Once the worker is ready its main process runs the consumer watchdog
  (``watchdog``: a consumer that stopped reading after a Redis outage restarts the worker) and the
  orphan sweeper (``sweeper``) in threads; one worker at a time sweeps, elected by a Redis lock.
  All three only with Redis as the broker (its queues are what they read; AMQP gives a dead
  consumer's messages back by itself).
- A worker refuses to start when the broker lease (visibility timeout) Celery will use is not
  longer than the hard time limit: a running job would be delivered a second time.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import redis
from celery import Celery, signals
from celery.exceptions import TimeLimitExceeded

from flaskmodel.jobs.admission import Admission
from flaskmodel.jobs.broker import job_of_task, make_celery
from flaskmodel.jobs.store import JobStore
from flaskmodel.settings import Settings
from flaskmodel.storage.redis import connect
from flaskmodel.storage.workers import DeliveryClaims, WorkerRegistry
from flaskmodel.worker.sweeper import start_sweeper
from flaskmodel.worker.watchdog import start_watchdog

logger = logging.getLogger(__name__)

# Seconds of clock and scheduling slack when telling a real hard-limit kill from a stale timer.
STALE_TOLERANCE = 0.5


def check_limits(app: Celery, settings: Settings) -> None:
    """Raise ``ValueError`` unless every visibility timeout Celery reads exceeds the hard limit."""
    limit = app.conf.task_time_limit or 0
    leases = {
        "broker_transport_options": app.conf.broker_transport_options.get("visibility_timeout"),
        "result_backend_transport_options": app.conf.result_backend_transport_options.get(
            "visibility_timeout"
        ),
        "visibility_timeout": app.conf.get("visibility_timeout"),
    }
    for where, lease in leases.items():
        if lease is None or lease <= limit:
            raise ValueError(
                f"{where} visibility_timeout ({lease}) must exceed the hard time limit "
                f"({limit} s, FLASKMODEL_JOBS__TIME_LIMIT); a running job would be redelivered"
            )
    if settings.jobs.soft_time_limit >= limit:
        raise ValueError("jobs.soft_time_limit must be below jobs.time_limit")


# Heartbeats a main process's claims live, and a message must be old before it is restored.
CLAIMS_TTL_BEATS = 3
RESTORE_GRACE_BEATS = 2


def held_delivery_tags() -> set[str]:
    """The broker delivery tags this worker holds: reserved, scheduled or running (read in its
    main process, from Celery's own state)."""
    from celery.worker import state  # noqa: PLC0415 - the worker's own module state

    for _ in range(5):
        try:  # the consumer thread changes these while they are copied: copy again then
            requests = [
                *state.requests.values(),
                *state.reserved_requests,
                *state.active_requests,
                *state.scheduled_requests,
            ]
            break
        except RuntimeError:
            continue
    else:
        raise RuntimeError("Celery's request state kept changing while read")
    tags = (getattr(getattr(r, "message", None), "delivery_tag", None) for r in requests)
    return {str(t) for t in tags if t is not None}


def publish_claims(client: redis.Redis, owner: str, interval: float, stop: threading.Event) -> None:
    """Every ``interval`` seconds, say which deliveries this main process holds."""
    claims = DeliveryClaims(client)
    since: float | None = None  # start of the current run of successful writes
    while True:
        sent_at = time.time()  # before the read: whatever was taken earlier is in it
        try:
            claims.publish(
                owner,
                held_delivery_tags(),
                sent_at=sent_at,
                since=since or sent_at,
                ttl=interval * CLAIMS_TTL_BEATS,
            )
        except redis.RedisError as exc:
            since = None
            logger.warning("could not publish the deliveries held: %s", exc)
        except Exception:  # the thread must outlive any one beat (claims last three)
            logger.exception("could not list the deliveries held")
        else:
            since = since or sent_at
        if stop.wait(interval):
            return


class MainProcessHooks:
    """Signal receivers of the worker's main process (its Redis client is made on first use)."""

    def __init__(self, settings: Settings, queues: list[str]) -> None:
        self._settings = settings
        self._queues = queues
        self._client: redis.Redis | None = None
        self._sweeper: threading.Event | None = None
        self._watchdog: threading.Event | None = None
        self._claims: threading.Event | None = None
        self._owner = f"{socket.gethostname()}:{os.getpid()}"

    def connect(self) -> None:
        signals.task_failure.connect(self.on_task_failure, weak=False)
        signals.worker_shutting_down.connect(self.on_shutting_down, weak=False)
        signals.worker_init.connect(self.on_init, weak=False)
        signals.worker_ready.connect(self.on_ready, weak=False)

    def _redis_broker(self) -> bool:
        # The claims, the sweeper and the watchdog read kombu's Redis keys; another broker
        # (RabbitMQ) keeps its messages elsewhere, acknowledges atomically and gives a dead
        # consumer's messages back by itself.
        return not self._settings.broker.url

    def on_init(self, **_: Any) -> None:
        # Before the consumer takes its first message (and, with the solo pool, before the
        # models load): what this process takes is claimed from the start.
        if self._redis_broker() and self._claims is None:
            self._claims = threading.Event()
            interval = self._settings.worker.heartbeat_seconds
            thread = threading.Thread(
                target=publish_claims,
                args=(connect(self._settings), self._owner, interval, self._claims),
                name="flaskmodel-claims",
                daemon=True,  # beats on through a warm shutdown: running jobs stay claimed
            )
            thread.start()

    def on_ready(self, sender: Any = None, **_: Any) -> None:
        if self._settings.broker.url:  # not Redis (see ``_redis_broker``)
            scheme = self._settings.broker.url.split(":", 1)[0]
            logger.info(
                "orphan sweeper and consumer watchdog off: the broker is %s, not Redis", scheme
            )
            return
        self._start_watchdog()
        self._start_sweeper()

    def _start_watchdog(self) -> None:
        interval = self._settings.worker.watchdog_seconds
        if interval <= 0 or self._watchdog is not None:
            return
        watchdog, self._watchdog = start_watchdog(
            connect(self._settings), self._queues, interval=interval
        )
        signals.task_received.connect(watchdog.received, weak=False)

    def _start_sweeper(self) -> None:
        interval = self._settings.jobs.sweep_seconds
        if interval <= 0 or self._sweeper is not None:
            return
        self._sweeper = start_sweeper(
            connect(self._settings),
            make_celery(self._settings),
            queue=self._settings.worker.queue,
            interval=interval,
            lease=self._settings.jobs.visibility_timeout,
            owner=self._owner,
            restore_grace=(
                self._settings.worker.heartbeat_seconds * RESTORE_GRACE_BEATS
                if self._settings.jobs.restore_unclaimed
                else None
            ),
        )

    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = connect(self._settings)
        return self._client

    def on_task_failure(self, task_id: str | None = None, exception: Any = None, **_: Any) -> None:
        if not isinstance(exception, TimeLimitExceeded) or task_id is None:
            return
        task_id = job_of_task(task_id)
        jobs = self._settings.jobs
        client = self._redis()
        try:
            if not self._ran_past_limit(client, task_id):
                return
            store = JobStore(client, ttl=jobs.ttl_seconds)
            store.fail(
                task_id,
                "timeout",
                f"job ran past its hard time limit of {jobs.time_limit} s and was stopped",
            )
            model = store.model_of(task_id)
            if model:
                Admission(client, max_pending=jobs.max_pending, ttl=jobs.ttl_seconds).release(
                    model, task_id
                )
        except redis.RedisError:
            logger.exception("job %s: could not record its hard time limit", task_id)
        else:
            logger.warning("job %s killed at its hard time limit; FAILED (timeout)", task_id)

    def _ran_past_limit(self, client: redis.Redis, job_id: str) -> bool:
        """Whether the job's current delivery started at least the hard limit ago.

        Billiard's timer of a delivery whose pool process died can still fire after the job was
        redelivered under the same id; that stale timeout must not fail the running delivery.
        """
        elapsed = JobStore(client, ttl=self._settings.jobs.ttl_seconds).running_for(job_id)
        if elapsed is None:
            return False
        if elapsed < self._settings.jobs.time_limit - STALE_TOLERANCE:
            logger.info("job %s: stale hard-limit timer ignored (running %.1fs)", job_id, elapsed)
            return False
        return True

    def on_shutting_down(self, **_: Any) -> None:
        for stop in (self._sweeper, self._watchdog):
            if stop is not None:
                stop.set()
        client = self._redis()
        registry = WorkerRegistry(client, ttl=self._settings.worker.heartbeat_seconds * 3)
        try:
            changed = registry.drain(
                socket.gethostname(), os.getpid(), ttl=self._settings.jobs.time_limit + 60
            )
        except redis.RedisError as exc:
            logger.warning("could not mark the worker draining: %s", exc)
        else:
            logger.info("worker draining: %d heartbeats marked not ready", changed)
