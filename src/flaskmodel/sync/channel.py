"""``SyncChannel``: one web process's multiplexed Redis link to the workers for synchronous calls.

A call used to cost its own two round trips (push the request, ``BLPOP`` a reply key of its own)
and a pooled connection held for the whole wait. Instead each web process keeps one reply list,
``flaskmodel:replies:<channel>``, and two background threads (greenlets under gevent's
monkey-patching):

- the **sender** takes every request frame queued since it last ran and pushes them in one
  pipeline: one ``LPUSH`` of all frames per model queue. Under gevent it runs once the request
  greenlets that are ready have queued theirs, so concurrent calls share round trips without any
  added delay;
- the **receiver** waits on the reply list, takes whatever is there in one round trip
  (``BLMPOP``) and wakes each waiting call by its request id. Replies nobody waits for any more
  (the caller's deadline passed) are dropped.

Workers push replies to the list named in the request header and refresh its TTL, so the list of
a web process that died expires on its own. Thread-safe, and fork-safe: a process that inherits
a channel from its parent starts its own on first use.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import redis

from flaskmodel.codecs import raw
from flaskmodel.errors import FlaskModelError, ServiceUnavailable
from flaskmodel.storage.lists import ListPopper
from flaskmodel.storage.pipelines import execute
from flaskmodel.sync import frames

logger = logging.getLogger(__name__)

# Most replies taken per round trip.
DRAIN = 256
# The receiver's blocking-pop timeout: how often it notices a stop request.
RECEIVE_POLL_SECONDS = 1.0
# Pause after a Redis error before the receiver tries again.
RETRY_SECONDS = 0.2


@dataclass
class _Waiter:
    done: threading.Event = field(default_factory=threading.Event)
    reply: raw.Frame | None = None
    error: Exception | None = None


class SyncChannel:
    """Sends request frames in shared round trips and routes replies to their callers."""

    def __init__(self, client: redis.Redis, *, queue_ttl: int) -> None:
        self._redis = client
        self._queue_ttl = queue_ttl
        self._lock = threading.Lock()
        self._pid = -1
        self._stop = threading.Event()

    def ensure_started(self) -> None:
        """Start this process's reply list and threads (again after a fork)."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._reply_list = frames.reply_list_key(uuid.uuid4().hex)
            self._push = frames.register_push(self._redis)
            self._waiters: dict[str, _Waiter] = {}
            self._outbox: list[tuple[str, bytes, str]] = []
            self._wake = threading.Event()
            for target, name in ((self._send_loop, "sync-send"), (self._receive_loop, "sync-recv")):
                threading.Thread(target=target, name=name, daemon=True).start()
            self._pid = os.getpid()

    @property
    def reply_list(self) -> str:
        """This process's reply list (the ``reply_to`` of its request frames)."""
        self.ensure_started()
        return self._reply_list

    def call(self, queue: str, request_id: str, frame: bytes, timeout: float) -> raw.Frame | None:
        """Send ``frame`` to ``queue`` and wait for its reply; None when ``timeout`` passes."""
        self.ensure_started()
        waiter = _Waiter()
        with self._lock:
            self._waiters[request_id] = waiter
            self._outbox.append((queue, frame, request_id))
        self._wake.set()
        try:
            waiter.done.wait(timeout)
        finally:
            with self._lock:
                self._waiters.pop(request_id, None)
        if waiter.error is not None:
            raise waiter.error
        return waiter.reply

    def close(self) -> None:
        """Stop the threads (within ``RECEIVE_POLL_SECONDS``); calls after this fail."""
        self._stop.set()
        if self._pid == os.getpid():
            self._wake.set()

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                batch, self._outbox = self._outbox, []
            if batch:
                self._send(batch)

    def _send(self, batch: list[tuple[str, bytes, str]]) -> None:
        by_queue: dict[str, list[bytes]] = defaultdict(list)
        for queue, frame, _ in batch:
            by_queue[queue].append(frame)
        pipe = self._redis.pipeline(transaction=False)
        for queue, queued in by_queue.items():
            # Every entry is dead after its deadline: a queue nobody consumes goes away.
            frames.queue_push(pipe, self._push, queue, queued, self._queue_ttl)
        try:
            execute(pipe, self._push)
        except Exception as exc:  # noqa: BLE001 - every caller must hear of it, not wait
            logger.warning("sync calls: %d requests not sent: %s", len(batch), exc)
            failure = ServiceUnavailable(f"redis unavailable: {exc}")
            with self._lock:
                for _, _, request_id in batch:
                    waiter = self._waiters.get(request_id)
                    if waiter is not None:
                        waiter.error = failure
                        waiter.done.set()

    def _receive_loop(self) -> None:
        popper = ListPopper(self._redis)
        while not self._stop.is_set():
            try:
                popped = popper.pop_many(
                    [self._reply_list], timeout=RECEIVE_POLL_SECONDS, direction="LEFT", count=DRAIN
                )
            except Exception as exc:  # noqa: BLE001 - the receiver must outlive any error
                logger.warning("sync calls: cannot read replies: %s", exc)
                self._stop.wait(RETRY_SECONDS)
                continue
            for blob in popped[1] if popped else []:
                self._deliver(blob)

    def _deliver(self, blob: bytes) -> None:
        try:
            reply = raw.decode(blob)
        except (FlaskModelError, ValueError, KeyError, TypeError) as exc:
            logger.warning("sync calls: dropped a malformed reply: %s", exc)
            return
        with self._lock:
            waiter = self._waiters.get(str(reply.header.get("id")))
        if waiter is None:
            return  # its caller's deadline passed
        waiter.reply = reply
        waiter.done.set()
