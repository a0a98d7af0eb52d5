"""``SyncConsumer``: the worker side of synchronous calls (the lean Redis protocol, not Celery).

One thread per worker process waits on ``flaskmodel:sync:<model>`` for every model the process
serves and takes whatever is queued for that model in the same round trip (``BLMPOP``), drops
requests whose deadline has passed (their caller has gone: the work is not computed) and hands
the rest to the model version's ``DynamicBatcher`` without waiting. A second thread sends the
replies, all those ready in one round trip: one ``LPUSH`` + ``EXPIRE`` per web process's reply list
(the request header's ``reply_to``). The requests of one wake-up for a fast model whose batcher
has nothing else to do, at least as many as its last batch held, are run by the consumer thread
itself (``DynamicBatcher.call_here``), which pushes their replies: each is spared a future, two
queues and two thread hand-offs, and a lone caller the wake-ups on a path of about a millisecond.
Synchronous calls are at-most-once: a request held by a worker that dies is answered by the
caller's deadline (504); durable work goes through jobs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from concurrent.futures import Future
from functools import partial
from typing import Any

import numpy as np
import redis

from flaskmodel.codecs import raw
from flaskmodel.errors import DeadlineExceeded, FlaskModelError, InvalidInput
from flaskmodel.runtime.batcher import DynamicBatcher
from flaskmodel.runtime.repository import ModelRepository
from flaskmodel.storage.link import Link
from flaskmodel.storage.lists import ListPopper
from flaskmodel.sync import frames

logger = logging.getLogger(__name__)

Outcome = dict[str, np.ndarray] | FlaskModelError | Exception
#: A request's header and input tensors.
Request = tuple[dict[str, Any], dict[str, np.ndarray]]
# Most requests taken per round trip.
DRAIN = 128
# How often the list of served models is re-read (new model folders appear without restart).
MODELS_REFRESH_SECONDS = 5.0


class SyncConsumer:
    """Feeds synchronous requests from Redis to the batchers and sends the replies back."""

    def __init__(
        self,
        client: redis.Redis,
        repository: ModelRepository,
        *,
        reply_ttl: int,
        poll_seconds: float = 1.0,
    ) -> None:
        self._redis = client
        self._push = frames.register_push(client)
        self._repository = repository
        self._reply_ttl = reply_ttl
        self._poll = poll_seconds
        self._replies: queue.SimpleQueue[tuple[dict[str, Any], Outcome] | None] = (
            queue.SimpleQueue()
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in ((self._consume, "sync-consumer"), (self._send, "sync-replies")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Take no more requests (the batchers may still answer those they hold)."""
        self._stop.set()
        for thread in self._threads[:1]:
            thread.join(self._poll + 5)

    def close(self) -> None:
        """Send the replies still queued, then end the reply thread (after ``stop``)."""
        self._stop.set()
        self._replies.put(None)
        for thread in self._threads[1:]:
            thread.join(5)

    def _consume(self) -> None:
        link = Link(self._redis)
        popper = ListPopper(self._redis, link)
        keys: list[str] = []
        refreshed = 0.0
        turn = 0
        while not self._stop.is_set():
            if time.monotonic() - refreshed > MODELS_REFRESH_SECONDS:
                keys = [frames.sync_queue_key(n) for n in self._repository.names()]
                refreshed = time.monotonic()
            if not keys:
                self._stop.wait(self._poll)
                continue
            # The pop serves its keys in order: rotate so a busy model cannot starve the others.
            turn = (turn + 1) % len(keys)
            order = keys[turn:] + keys[:turn]
            try:
                popped = popper.pop_many(order, timeout=self._poll, direction="RIGHT", count=DRAIN)
            except redis.RedisError as exc:
                logger.warning("sync consumer: redis unavailable: %s", exc)
                self._stop.wait(self._poll)
                continue
            self._dispatch(popped[1] if popped else [], link)
        link.close()

    def _dispatch(self, blobs: list[bytes], link: Link) -> None:
        """Hand one wake-up's requests to their batchers. Those of a batcher that would run them
        at once anyway are run on this thread and answered on ``link`` (``call_here``)."""
        groups: dict[int, tuple[DynamicBatcher, list[Request]]] = {}
        # Each model version looked up once a wake-up: its batcher, or its load's future.
        found: dict[tuple[str, str], DynamicBatcher | Future[DynamicBatcher]] = {}
        for blob in blobs:
            request = _request(blob)
            if request is None:
                continue
            header = request[0]
            name, version = str(header["model"]), header.get("version")
            key = (name, repr(version))  # hashable whatever the frame holds
            loaded = found.get(key)
            if loaded is None:
                try:
                    loaded = self._repository.future(name, version)
                except Exception as exc:  # noqa: BLE001 - the caller gets the cause as its reply
                    self._replies.put((header, exc))
                    continue
                if loaded.done() and loaded.exception() is None:
                    loaded = loaded.result()
                found[key] = loaded
            if isinstance(loaded, Future):
                # A version still loading (or failed) holds only its own requests, never this
                # thread.
                loaded.add_done_callback(partial(self._submit, request))
                continue
            groups.setdefault(id(loaded), (loaded, []))[1].append(request)
        for batcher, requests in groups.values():
            live = [r for r in requests if not _expired(batcher, r[0])]
            if live and not self._answer_here(batcher, live, link):
                for request in live:
                    self._hand(batcher, request)

    def _answer_here(self, batcher: DynamicBatcher, requests: list[Request], link: Link) -> bool:
        """Run the requests and push their replies on this thread if their batcher would run
        them at once anyway; False: hand them over as usual (the path that answers a malformed
        request)."""
        calls = [(tensors, float(header["deadline"])) for header, tensors in requests]
        try:
            futures = batcher.call_here(calls)
        except Exception:  # noqa: BLE001 - ``submit`` raises it again and answers it
            return False
        if futures is None:
            return False
        replies = []
        for (header, _), future in zip(requests, futures, strict=True):
            exc = future.exception()
            if not isinstance(exc, DeadlineExceeded):  # dropped: nobody waits for it any more
                replies.append((header, exc if isinstance(exc, Exception) else future.result()))
        self._push_replies(link, replies)
        return True

    def _submit(self, request: Request, loaded: Future[DynamicBatcher]) -> None:
        """A request whose model version was loading when it came, once it is loaded (or not)."""
        try:
            batcher = loaded.result()
        except Exception as exc:  # noqa: BLE001 - the caller gets the cause as its reply
            self._replies.put((request[0], exc))
            return
        if not _expired(batcher, request[0]):
            self._hand(batcher, request)

    def _hand(self, batcher: DynamicBatcher, request: Request) -> None:
        """Queue a request in its batcher; the reply thread sends its answer."""
        header, tensors = request
        try:
            future = batcher.submit(tensors, deadline=float(header["deadline"]))
        except Exception as exc:  # noqa: BLE001 - the caller gets the cause as its reply
            self._replies.put((header, exc))
            return
        future.add_done_callback(partial(self._finished, header))

    def _finished(self, header: dict[str, Any], future: Future[dict[str, np.ndarray]]) -> None:
        exc = future.exception()
        if isinstance(exc, DeadlineExceeded):
            return  # dropped before its batch ran: nobody waits for an answer any more
        self._replies.put((header, exc if isinstance(exc, Exception) else future.result()))

    def _send(self) -> None:
        link = Link(self._redis)
        try:
            self._send_replies(link)
        finally:
            link.close()

    def _send_replies(self, link: Link) -> None:
        stopping = False
        while not stopping:
            item = self._replies.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < 256:
                try:
                    more = self._replies.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
            self._push_replies(link, batch)

    def _push_replies(self, link: Link, replies: list[tuple[dict[str, Any], Outcome]]) -> None:
        """Send replies in one round trip: an ``LPUSH`` + ``EXPIRE`` per reply list."""
        by_list: dict[str, list[bytes]] = defaultdict(list)
        for header, outcome in replies:
            by_list[str(header.get("reply_to"))].append(reply_frame(header, outcome))
        ttl = self._reply_ttl
        pushes = [frames.push_command(self._push, to, got, ttl) for to, got in by_list.items()]
        if not pushes:
            return
        try:
            link.run(pushes, [self._push])
        except redis.RedisError as exc:
            logger.warning("sync consumer: %d replies lost: %s", len(replies), exc)


def reply_frame(header: dict[str, Any], outcome: Outcome) -> bytes:
    """The reply to one request: its outputs (only those it asked for), or its error."""
    base = {"id": header["id"], "model_version": header.get("version")}
    if isinstance(outcome, dict):
        wanted = header.get("outputs")
        outputs = outcome if not wanted else {k: v for k, v in outcome.items() if k in wanted}
        return raw.encode(base, outputs)
    if isinstance(outcome, FlaskModelError):
        error = outcome.to_dict()
    else:
        logger.warning("sync request %s failed: %r", header["id"], outcome)
        error = {"type": "internal_error", "message": f"{type(outcome).__name__}: {outcome}"}
    return raw.encode({**base, "error": error})


def _request(blob: bytes) -> Request | None:
    """A request frame's header and tensors; None (logged) for a malformed frame or one without
    an id, reply list or deadline, which no caller could be answered for."""
    try:
        request = raw.decode(blob)
    except (InvalidInput, KeyError, TypeError, ValueError) as exc:
        logger.warning("sync consumer: dropped a malformed request frame: %s", exc)
        return None
    header = request.header
    reply_to = header.get("reply_to")
    deadline = header.get("deadline")
    if (
        not isinstance(header.get("id"), str)
        or not (isinstance(reply_to, str) and reply_to.startswith(frames.reply_list_key("")))
        or not isinstance(deadline, (int, float))
        or isinstance(deadline, bool)
    ):
        logger.warning(
            "sync consumer: dropped a request frame without an id, reply list or deadline"
        )
        return None
    return header, request.tensors


def _expired(batcher: DynamicBatcher, header: dict[str, Any]) -> bool:
    """Whether a request's deadline has passed (counted and logged: its caller has gone, so it
    is not computed)."""
    if header["deadline"] > time.time():
        return False
    batcher.stats.expired()
    logger.info("sync request %s for %s expired in the queue", header["id"], header["model"])
    return True
