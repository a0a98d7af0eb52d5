"""The worker's sync consumer against a real Redis and a real SavedModel: the requests of one
wake-up are answered on the consumer's own thread, in one batch, while the batcher has nothing
else to do; fewer than its last batch held go to the batch thread to wait for company; every
caller gets its own answer either way."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from flaskmodel.codecs import raw
from flaskmodel.runtime.batcher import SLOW_CALL_SAMPLES
from flaskmodel.runtime.repository import ModelRepository
from flaskmodel.settings import Settings
from flaskmodel.storage.redis import connect_frames
from flaskmodel.sync import frames
from flaskmodel.sync.channel import SyncChannel
from flaskmodel.worker.sync_consumer import SyncConsumer
from tests import databases
from tests.conftest import redis_db
from tests.web.test_predict_v1 import reference


class Served:
    """A consumer serving ``tiny``, the web side's channel, and the threads the model ran on."""

    def __init__(self, settings: Settings, models_root: Path) -> None:
        self.settings = settings
        self.models_root = models_root
        self.repository = ModelRepository.from_settings(settings, only=["tiny"])
        assert not self.repository.load_all()
        self.batcher = self.repository.get("tiny")
        self.threads: list[str] = []
        model = self.batcher.runtime
        predict = model.predict

        def spy(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            self.threads.append(threading.current_thread().name)
            return predict(inputs)

        model.predict = spy  # type: ignore[method-assign]
        self.consumer = self._consumer()
        self.channel = SyncChannel(connect_frames(settings, max_connections=4), queue_ttl=30)
        self.consumer.start()

    def _consumer(self) -> SyncConsumer:
        client = connect_frames(self.settings, max_connections=4)
        return SyncConsumer(client, self.repository, reply_ttl=30, poll_seconds=0.2)

    def pause(self) -> Callable[[], None]:
        """Stop the consumer; call the answer to start a new one."""
        self.consumer.stop()
        self.consumer.close()
        self.consumer = self._consumer()
        return self.consumer.start

    def call(
        self, x: np.ndarray, *, deadline: float | None = None, model: str = "tiny", version: Any = 1
    ) -> raw.Frame | None:
        request_id = f"r{time.monotonic_ns()}-{threading.get_ident()}"
        header: dict[str, Any] = {
            "id": request_id, "model": model, "version": version,
            "reply_to": self.channel.reply_list, "deadline": deadline or time.time() + 10,
        }  # fmt: skip
        frame = raw.encode(header, {"x": x})
        return self.channel.call(frames.sync_queue_key("tiny"), request_id, frame, timeout=10)

    def close(self) -> None:
        self.channel.close()
        self.consumer.stop()
        self.repository.close()
        self.consumer.close()


@pytest.fixture
def served(
    make_settings: Callable[..., Settings], redis_url: str, models_root: Path
) -> Iterator[Served]:
    url = redis_db(redis_url, databases.SYNC_CONSUMER)
    redis.Redis.from_url(url).flushdb()
    served = Served(make_settings(models_root=models_root, redis={"url": url}), models_root)
    yield served
    served.close()


def _one_wake_up(
    served: Served, calls: Sequence[Callable[[], raw.Frame | None]]
) -> list[raw.Frame | None]:
    """The replies of ``calls`` (each made on a thread of its own), all queued while the consumer
    was stopped, so that one pop takes them together."""
    resume = served.pause()
    replies: list[raw.Frame | None] = [None] * len(calls)

    def call(index: int) -> None:
        replies[index] = calls[index]()

    callers = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for caller in callers:
        caller.start()
    client = connect_frames(served.settings, max_connections=1)
    deadline = time.monotonic() + 5
    while client.llen(frames.sync_queue_key("tiny")) < len(calls):
        assert time.monotonic() < deadline, "the requests were not queued"
        time.sleep(0.01)
    resume()
    for caller in callers:
        caller.join(15)
    return replies


def _check(served: Served, x: np.ndarray, reply: raw.Frame | None) -> None:
    assert reply is not None and "error" not in reply.header, reply
    want = reference(served.models_root, "tiny", x=x)["probabilities"]
    np.testing.assert_allclose(reply.tensors["probabilities"], want, rtol=1e-5)


def test_a_lone_request_is_answered_on_the_consumer_thread(served: Served) -> None:
    rng = np.random.default_rng(3)
    # Until the batcher knows the model is fast (its median call), lone requests go the usual way.
    for _ in range(SLOW_CALL_SAMPLES):
        x = rng.normal(size=(1, 32)).astype(np.float32)
        _check(served, x, served.call(x))
    assert set(served.threads) == {"batcher-tiny"}
    served.threads.clear()
    for rows in (1, 3):
        x = rng.normal(size=(rows, 32)).astype(np.float32)
        _check(served, x, served.call(x))
    assert served.threads == ["sync-consumer", "sync-consumer"]
    stats = served.batcher.stats.snapshot()
    assert stats.requests == SLOW_CALL_SAMPLES + 2 and stats.items == SLOW_CALL_SAMPLES + 4
    # A bad input gets its error as the reply, as it would from the batch thread.
    bad = served.call(np.zeros((1, 5), np.float32))
    assert bad is not None and bad.header["error"]["type"] in {"invalid_input", "model_error"}


def test_requests_that_come_together_share_a_batch_then_fewer_wait_for_company(
    served: Served,
) -> None:
    rng = np.random.default_rng(4)
    for _ in range(SLOW_CALL_SAMPLES):
        x = rng.normal(size=(1, 32)).astype(np.float32)
        _check(served, x, served.call(x))
    served.threads.clear()
    # Queued before the consumer pops them: one pop takes all eight.
    inputs = [rng.normal(size=(1, 32)).astype(np.float32) for _ in range(8)]
    replies = _one_wake_up(served, [partial(served.call, x) for x in inputs])
    for x, reply in zip(inputs, replies, strict=True):
        _check(served, x, reply)
    assert set(served.threads) == {"sync-consumer"}
    assert len(served.threads) < len(inputs)  # merged
    # The last batch merged calls: a lone request goes to the batch thread, which waits for
    # company up to the delay; once a batch of one has run, the next one is answered here.
    served.threads.clear()
    for _ in range(2):
        x = rng.normal(size=(1, 32)).astype(np.float32)
        _check(served, x, served.call(x))
    assert served.threads == ["batcher-tiny", "sync-consumer"]


def test_a_lone_request_past_its_deadline_is_not_computed(served: Served) -> None:
    rng = np.random.default_rng(5)
    for _ in range(SLOW_CALL_SAMPLES):
        x = rng.normal(size=(1, 32)).astype(np.float32)
        _check(served, x, served.call(x))
    served.threads.clear()
    before = served.batcher.stats.snapshot().expired
    started = time.monotonic()
    request_id = "late"
    frame = raw.encode(
        {"id": request_id, "model": "tiny", "version": 1, "reply_to": served.channel.reply_list,
         "deadline": time.time() - 1},
        {"x": np.zeros((1, 32), np.float32)},
    )  # fmt: skip
    assert served.channel.call(frames.sync_queue_key("tiny"), request_id, frame, 0.5) is None
    assert time.monotonic() - started >= 0.5
    assert served.threads == []
    assert served.batcher.stats.snapshot().expired == before + 1


def test_one_wake_up_answers_each_request_for_its_own_model_version(served: Served) -> None:
    """The consumer looks each model version up once a wake-up: requests for an unknown version
    or model among good ones get their own error, the others their answers."""
    rng = np.random.default_rng(6)
    asked: list[tuple[str, Any]] = [
        ("tiny", 1), ("tiny", 9), ("tiny", None), ("nosuch", 1), ("tiny", 1), ("tiny", [1]),
    ]  # fmt: skip
    inputs = [rng.normal(size=(1, 32)).astype(np.float32) for _ in asked]
    pairs = zip(inputs, asked, strict=True)
    calls = [partial(served.call, x, model=m, version=v) for x, (m, v) in pairs]
    replies = _one_wake_up(served, calls)
    for (model, version), x, reply in zip(asked, inputs, replies, strict=True):
        if model == "tiny" and version in (1, None):
            _check(served, x, reply)
        else:
            assert reply is not None and reply.header["error"]["type"] == "model_not_found", (
                model, version, reply,
            )  # fmt: skip
