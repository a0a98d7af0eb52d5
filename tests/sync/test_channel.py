"""``SyncChannel`` against a real Redis: shared round trips, routing by id, deadlines, outages,
rate-limit counts made with the push."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from flaskmodel.codecs import raw
from flaskmodel.errors import RateLimited, ServiceUnavailable
from flaskmodel.storage.gcra import Ticket
from flaskmodel.sync.channel import SyncChannel
from flaskmodel.web.ratelimit import RateLimiter
from tests import procs


@pytest.fixture
def binary_client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, socket_timeout=5)


@pytest.fixture
def channel(binary_client: redis.Redis) -> Iterator[SyncChannel]:
    channel = SyncChannel(binary_client, queue_ttl=10)
    yield channel
    channel.close()


def echo_worker(client: redis.Redis, queue: str, stop: threading.Event, pops: list[int]) -> None:
    """Answer every request on ``queue`` with its own tensors doubled, as the workers would."""
    while not stop.is_set():
        popped = client.brpop([queue], timeout=0.2)
        if popped is None:
            continue
        raws = [popped[1], *(client.rpop(queue, 1000) or [])]
        pops.append(len(raws))
        pipe = client.pipeline(transaction=False)
        for blob in raws:
            request = raw.decode(blob)
            doubled = {k: v * 2 for k, v in request.tensors.items()}
            pipe.lpush(request.header["reply_to"], raw.encode(request.header, doubled))
        pipe.execute()


def request(channel: SyncChannel, value: float) -> tuple[str, bytes]:
    request_id = uuid.uuid4().hex
    header = {"id": request_id, "reply_to": channel.reply_list}
    return request_id, raw.encode(header, {"x": np.full((1, 2), value, np.float32)})


def test_concurrent_calls_each_get_their_own_reply_in_shared_round_trips(
    binary_client: redis.Redis, channel: SyncChannel
) -> None:
    queue = f"test:sync:{uuid.uuid4().hex}"
    stop, pops = threading.Event(), []
    worker = threading.Thread(target=echo_worker, args=(binary_client, queue, stop, pops))
    worker.start()
    answers: dict[int, float] = {}

    def caller(i: int) -> None:
        request_id, frame = request(channel, float(i))
        reply = channel.call(queue, request_id, frame, timeout=10)
        assert reply is not None
        assert reply.header["id"] == request_id
        answers[i] = float(reply.tensors["x"][0, 0])

    try:
        threads = [threading.Thread(target=caller, args=(i,)) for i in range(200)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        stop.set()
        worker.join(5)
    assert answers == {i: 2.0 * i for i in range(200)}
    print(f"\n200 calls reached the worker in {len(pops)} pops (largest {max(pops)})")
    assert len(pops) < 200  # requests shared round trips


def test_a_call_past_its_deadline_returns_none_and_its_late_reply_is_dropped(
    binary_client: redis.Redis, channel: SyncChannel
) -> None:
    queue = f"test:sync:{uuid.uuid4().hex}"
    request_id, frame = request(channel, 1.0)
    started = time.monotonic()
    assert channel.call(queue, request_id, frame, timeout=0.3) is None
    assert 0.3 <= time.monotonic() - started < 2
    # The worker answers late: the reply is consumed and dropped, the next call is unaffected.
    blob = binary_client.rpop(queue)
    assert isinstance(blob, bytes)
    binary_client.lpush(channel.reply_list, blob)
    stop, pops = threading.Event(), []
    worker = threading.Thread(target=echo_worker, args=(binary_client, queue, stop, pops))
    worker.start()
    try:
        next_id, next_frame = request(channel, 3.0)
        reply = channel.call(queue, next_id, next_frame, timeout=10)
    finally:
        stop.set()
        worker.join(5)
    assert reply is not None and reply.header["id"] == next_id
    assert binary_client.llen(channel.reply_list) == 0


def test_redis_down_fails_the_call_with_service_unavailable() -> None:
    # A free loopback port: connecting is refused at once.
    client = redis.Redis.from_url(f"redis://127.0.0.1:{procs.free_port()}/0", socket_timeout=0.5)
    channel = SyncChannel(client, queue_ttl=10)
    request_id, frame = request(channel, 1.0)
    started = time.monotonic()
    try:
        with pytest.raises(ServiceUnavailable, match="redis unavailable"):
            channel.call("test:sync:down", request_id, frame, timeout=10)
    finally:
        channel.close()
    assert time.monotonic() - started < 3


def ticket(client: redis.Redis, burst: int) -> Ticket:
    """A request's count against a bucket of its own (``burst`` requests, none refilled during
    the test); counted by the limiter's own script when the push has not counted it."""
    limiter = RateLimiter(client, per_second=0.001, burst=burst)
    return Ticket(f"test:rate:{uuid.uuid4().hex}", limiter.bucket, limiter.ticket("x").check)


def test_a_ticket_is_counted_with_the_push_and_a_refused_frame_is_never_queued(
    binary_client: redis.Redis, channel: SyncChannel
) -> None:
    queue = f"test:sync:{uuid.uuid4().hex}"
    first = ticket(binary_client, burst=1)
    second = Ticket(first.key, first.bucket, first.check)
    request_id, frame = request(channel, 1.0)
    assert channel.call(queue, request_id, frame, timeout=0.3, ticket=first) is None  # no worker
    assert first.verdict is not None and not first.refused
    started = time.monotonic()
    request_id, frame = request(channel, 2.0)
    assert channel.call(queue, request_id, frame, timeout=10, ticket=second) is None
    assert time.monotonic() - started < 2  # answered at once, not at its deadline
    assert second.refused
    with pytest.raises(RateLimited, match=r"burst 1\) reached"):
        second.admit()
    queued = [raw.decode(blob).tensors["x"][0, 0] for blob in binary_client.lrange(queue, 0, -1)]
    assert queued == [1.0]  # only the allowed request's frame


def test_a_reply_before_the_push_is_answered_waits_for_the_count(
    binary_client: redis.Redis, channel: SyncChannel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker can answer before the sender has read the push's reply: the call must still
    return with its ticket counted (by the push, once), not count it a second time."""
    queue = f"test:sync:{uuid.uuid4().hex}"
    send = channel._send
    monkeypatch.setattr(channel, "_send", lambda *args: (time.sleep(0.5), send(*args)))
    stop, pops = threading.Event(), []
    worker = threading.Thread(target=echo_worker, args=(binary_client, queue, stop, pops))
    worker.start()
    counted = ticket(binary_client, burst=2)
    request_id, frame = request(channel, 1.0)
    # The reply, as the worker would send it, lands while the sender still sleeps.
    reply = raw.encode({"id": request_id}, {"x": np.full((1, 2), 2.0, np.float32)})
    threading.Timer(0.2, binary_client.lpush, (channel.reply_list, reply)).start()
    try:
        answered = channel.call(queue, request_id, frame, timeout=10, ticket=counted)
    finally:
        stop.set()
        worker.join(5)
    assert answered is not None and answered.header["id"] == request_id
    assert counted.verdict is not None and not counted.refused
    # Counted once: a second request of the bucket (burst 2) is still allowed, a third not.
    assert [counted.check(counted.key)[0] for _ in range(2)] == [1, 0]
