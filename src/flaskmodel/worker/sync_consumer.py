"""``SyncConsumer``: the worker side of synchronous calls (the lean Redis protocol, not Celery).

One thread per worker process waits on ``flaskmodel:sync:<model>`` for every model the process
serves and takes whatever is queued for that model in the same round trip (``BLMPOP``), drops
requests whose deadline has passed (their caller has gone: the work is not computed) and hands
the rest to the model version's ``DynamicBatcher`` without waiting. A second thread sends the
replies, all those ready in one round trip: one ``LPUSH`` + ``EXPIRE`` per web process's reply list
(the request header's ``reply_to``). A request that comes alone, for a fast model whose batcher
has nothing else to do (``DynamicBatcher.call_alone``), is answered by the consumer thread itself:
it runs the model call and pushes the reply, sparing the lone caller two thread hand-offs.
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
            blobs = popped[1] if popped else []
            for blob in blobs:
                self._dispatch(blob, link if len(blobs) == 1 else None)
        link.close()

    def _dispatch(self, blob: bytes, link: Link | None = None) -> None:
        """Hand a request to its batcher (``link``: the consumer's own, when the request came
        alone, to answer it on this thread if its batcher would run it alone anyway)."""
        try:
            request = raw.decode(blob)
        except (InvalidInput, KeyError, TypeError, ValueError) as exc:
            logger.warning("sync consumer: dropped a malformed request frame: %s", exc)
            return
        header = request.header
        reply_to = header.get("reply_to")
        if not isinstance(header.get("id"), str) or not (
            isinstance(reply_to, str) and reply_to.startswith(frames.reply_list_key(""))
        ):
            logger.warning("sync consumer: dropped a request frame without an id or reply list")
            return
        try:
            # A version still loading holds only its own requests, never this thread.
            pending = self._repository.future(str(header["model"]), header.get("version"))
        except Exception as exc:  # noqa: BLE001 - the caller gets the cause as its reply
            self._replies.put((header, exc))
            return
        if link is not None and self._answer_alone(pending, header, request.tensors, link):
            return
        pending.add_done_callback(lambda loaded: self._submit(header, request.tensors, loaded))

    def _answer_alone(
        self,
        loaded: Future[DynamicBatcher],
        header: dict[str, Any],
        tensors: dict[str, np.ndarray],
        link: Link,
    ) -> bool:
        """Run the request and push its reply on this thread, if its batcher would run it alone
        at once; False: hand it over as usual (also for a version still loading, or an expired or
        malformed request, which that path answers)."""
        deadline = float(header.get("deadline") or 0)
        if not loaded.done() or loaded.exception() is not None or deadline <= time.time():
            return False
        try:
            future = loaded.result().call_alone(tensors, deadline=deadline)
        except Exception:  # noqa: BLE001 - ``submit`` raises it again and answers it
            return False
        if future is None:
            return False
        exc = future.exception()
        if isinstance(exc, DeadlineExceeded):
            return True  # dropped before it ran: nobody waits for an answer any more
        outcome: Outcome = exc if isinstance(exc, Exception) else future.result()
        push = frames.push_command(
            self._push, str(header["reply_to"]), [reply_frame(header, outcome)], self._reply_ttl
        )
        try:
            link.run([push], [self._push])
        except redis.RedisError as error:
            logger.warning("sync consumer: a reply lost: %s", error)
        return True

    def _submit(
        self,
        header: dict[str, Any],
        tensors: dict[str, np.ndarray],
        loaded: Future[DynamicBatcher],
    ) -> None:
        try:
            batcher = loaded.result()
            if float(header.get("deadline") or 0) <= time.time():
                batcher.stats.expired()
                logger.info(
                    "sync request %s for %s expired in the queue", header["id"], header["model"]
                )
                return
            future = batcher.submit(tensors, deadline=float(header["deadline"]))
        except Exception as exc:  # noqa: BLE001 - the caller gets the cause as its reply
            self._replies.put((header, exc))
            return
        future.add_done_callback(lambda done: self._finished(header, done))

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
            by_list: dict[str, list[bytes]] = defaultdict(list)
            for header, outcome in batch:
                by_list[str(header.get("reply_to"))].append(reply_frame(header, outcome))
            ttl = self._reply_ttl
            pushes = [frames.push_command(self._push, to, got, ttl) for to, got in by_list.items()]
            try:
                link.run(pushes, [self._push])
            except redis.RedisError as exc:
                logger.warning("sync consumer: %d replies lost: %s", len(batch), exc)


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
