"""``ConsumerWatchdog``: restarts a worker whose broker consumer has stopped reading.

kombu's Redis transport can stop taking messages after an outage without noticing it: seen here
after Redis was frozen (SIGSTOP) for two seconds, the worker's main process sat idle for as long
as Redis stayed up while jobs waited in its queues (the same family as celery#8030 and
kombu#1785). Nothing inside the worker wakes it; a new connection does.

So every worker's main process checks, every ``interval`` seconds, whether it is idle (no task
running or reserved) while messages wait in the Redis lists of the queues it consumes, without
having received one since the previous check. When that has held for ``stall_checks`` checks in
a row it logs the stall and sends itself SIGTERM: the warm shutdown has nothing to wait for, and
the supervisor (supervisord in ``flaskmodel up``) starts a fresh worker, whose new connection
consumes again. Messages are never lost by this: acknowledgement is late, and what the stalled
consumer held comes back through kombu's restore or the orphan sweeper.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

import redis

from flaskmodel.jobs.broker import redis_queue_keys

logger = logging.getLogger(__name__)


class ConsumerWatchdog:
    """Tells a stalled consumer (idle, messages waiting, none received) from a healthy one."""

    def __init__(
        self,
        client: redis.Redis,
        queues: list[str],
        *,
        idle: Callable[[], bool],
        stall_checks: int = 3,
    ) -> None:
        self._redis = client
        self._lists = [name for queue in queues for name in redis_queue_keys(queue)]
        self._idle = idle
        self._stall_checks = stall_checks
        self._received = 0
        self._seen = 0
        self._strikes = 0

    def received(self, **_: object) -> None:
        """A message reached the consumer (the ``task_received`` signal)."""
        self._received += 1

    def stalled(self) -> bool:
        """One check; True once the consumer looks stalled ``stall_checks`` times in a row."""
        got, self._seen = self._received != self._seen, self._received
        if got or not self._idle() or not self._waiting():
            self._strikes = 0
            return False
        self._strikes += 1
        return self._strikes >= self._stall_checks

    def _waiting(self) -> bool:
        pipe = self._redis.pipeline(transaction=False)
        for name in self._lists:
            pipe.llen(name)
        return any(int(n) for n in pipe.execute())

    def run(self, stop: threading.Event, interval: float) -> None:
        while not stop.wait(interval):
            try:
                if not self.stalled():
                    continue
            except redis.RedisError:
                self._strikes = 0  # Redis itself is away: the broker connection will notice
                continue
            logger.error(
                "the broker consumer took no message for %.0f s while idle with messages "
                "waiting in its queues; restarting the worker for a new connection",
                interval * self._stall_checks,
            )
            os.kill(os.getpid(), signal.SIGTERM)
            return


def worker_is_idle() -> bool:
    """No task running or reserved in this worker (read in its main process)."""
    from celery.worker import state  # noqa: PLC0415 - the worker's own module state

    return not state.active_requests and not state.reserved_requests


def start_watchdog(
    client: redis.Redis, queues: list[str], *, interval: float
) -> tuple[ConsumerWatchdog, threading.Event]:
    """Run a watchdog in a daemon thread; set the returned event to stop it."""
    watchdog = ConsumerWatchdog(client, queues, idle=worker_is_idle)
    stop = threading.Event()
    thread = threading.Thread(
        target=watchdog.run, args=(stop, interval), name="flaskmodel-watchdog", daemon=True
    )
    thread.start()
    return watchdog, stop
