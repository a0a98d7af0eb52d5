"""``SyncChannel``: one web process's multiplexed Redis link to the workers for synchronous calls.

A call used to cost its own two round trips (push the request, ``BLPOP`` a reply key of its own)
and a pooled connection held for the whole wait. Instead each web process keeps one reply list,
``flaskmodel:replies:<channel>``, and two background threads (greenlets under gevent's
monkey-patching):

- the **sender** takes every request frame queued since it last ran and pushes them in one
  round trip: one ``LPUSH`` of all frames per model queue. Under gevent it runs once the request
  greenlets that are ready have queued theirs, so concurrent calls share round trips without any
  added delay. A call with a rate-limit ``Ticket`` not yet counted is counted in the same script
  call that pushes its frame (``frames.GATED_PUSH_SCRIPT``): a refused call returns at once, its
  frame never queued;
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
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import redis

from flaskmodel.codecs import raw
from flaskmodel.errors import FlaskModelError, ServiceUnavailable
from flaskmodel.storage.gcra import Bucket, Ticket
from flaskmodel.storage.link import Command, Link
from flaskmodel.storage.lists import ListPopper
from flaskmodel.sync import frames

logger = logging.getLogger(__name__)

# Most replies taken per round trip.
DRAIN = 256
# The receiver's blocking-pop timeout: how often it notices a stop request.
RECEIVE_POLL_SECONDS = 1.0
# Pause after a Redis error before the receiver tries again.
RETRY_SECONDS = 0.2


@dataclass(frozen=True)
class _Outgoing:
    queue: str
    frame: bytes
    request_id: str
    ticket: Ticket | None  # counted with the push; None: counted already, or not limited


@dataclass
class _Waiter:
    done: threading.Event = field(default_factory=threading.Event)
    sent: threading.Event | None = None  # set once the push's count is in the ticket
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
            self._gated = frames.register_gated_push(self._redis)
            self._waiters: dict[str, _Waiter] = {}
            self._outbox: list[_Outgoing] = []
            self._wake = threading.Event()
            for target, name in ((self._send_loop, "sync-send"), (self._receive_loop, "sync-recv")):
                threading.Thread(target=target, name=name, daemon=True).start()
            self._pid = os.getpid()

    @property
    def reply_list(self) -> str:
        """This process's reply list (the ``reply_to`` of its request frames)."""
        self.ensure_started()
        return self._reply_list

    def call(
        self,
        queue: str,
        request_id: str,
        frame: bytes,
        timeout: float,
        ticket: Ticket | None = None,
    ) -> raw.Frame | None:
        """Send ``frame`` to ``queue`` and wait for its reply; None when ``timeout`` passes, or
        at once when the count of ``ticket`` (one not counted yet), made with the push, refused
        it (``ticket.refused``)."""
        self.ensure_started()
        # A reply can come before the sender has read the push's answer: the caller waits for
        # both, so that its ticket is counted once.
        waiter = _Waiter(sent=None if ticket is None else threading.Event())
        deadline = time.monotonic() + timeout
        with self._lock:
            self._waiters[request_id] = waiter
            self._outbox.append(_Outgoing(queue, frame, request_id, ticket))
        self._wake.set()
        try:
            waiter.done.wait(timeout)
            if waiter.sent is not None:
                waiter.sent.wait(max(deadline - time.monotonic(), 0))
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
        link = Link(self._redis)
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                batch, self._outbox = self._outbox, []
            if batch:
                self._send(batch, link)
        link.close()

    def _send(self, batch: list[_Outgoing], link: Link) -> None:
        plain: dict[str, list[bytes]] = defaultdict(list)
        gated: dict[tuple[str, Bucket], list[tuple[_Outgoing, Ticket]]] = defaultdict(list)
        for out in batch:
            if out.ticket is None:
                plain[out.queue].append(out.frame)
            else:
                gated[out.queue, out.ticket.bucket].append((out, out.ticket))
        # Every entry is dead after its deadline: a queue nobody consumes goes away.
        ttl = self._queue_ttl
        commands: list[Command] = [
            frames.push_command(self._push, queue, queued, ttl) for queue, queued in plain.items()
        ]
        for (queue, bucket), outs in gated.items():
            items = [(out.frame, ticket.key) for out, ticket in outs]
            commands.append(frames.gated_push_command(self._gated, queue, items, bucket, ttl))
        try:
            replies = link.run(commands, (self._push, self._gated))
        except Exception as exc:  # noqa: BLE001 - every caller must hear of it, not wait
            logger.warning("sync calls: %d requests not sent: %s", len(batch), exc)
            self._answer(batch, ServiceUnavailable(f"redis unavailable: {exc}"))
            return
        for outs, flat in zip(gated.values(), replies[len(plain) :], strict=True):
            for i, (_, ticket) in enumerate(outs):
                ticket.verdict = (int(flat[2 * i]), int(flat[2 * i + 1]))
        self._answer([out for outs in gated.values() for out, _ in outs], None)

    def _answer(self, outs: list[_Outgoing], error: Exception | None) -> None:
        """Tell the callers of ``outs`` that their push is done: with ``error``, or refused by
        its ticket (both wake them now), or sent (they wait on for the reply)."""
        with self._lock:
            for out in outs:
                waiter = self._waiters.get(out.request_id)
                if waiter is None:
                    continue
                if waiter.sent is not None:
                    waiter.sent.set()
                if error is not None or (out.ticket is not None and out.ticket.refused):
                    waiter.error = error
                    waiter.done.set()

    def _receive_loop(self) -> None:
        link = Link(self._redis)
        popper = ListPopper(self._redis, link)
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
        link.close()

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
