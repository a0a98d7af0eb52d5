"""``ConsumerWatchdog`` against a real Redis: a stall is idle + messages waiting + none received."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from flaskmodel.jobs.broker import redis_queue_keys
from flaskmodel.settings import Settings
from flaskmodel.worker.watchdog import ConsumerWatchdog
from tests import databases
from tests.conftest import redis_db

QUEUE = "watchdog-test.tiny"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    found = redis.Redis.from_url(redis_db(redis_url, databases.WATCHDOG))
    found.flushdb()
    yield found
    found.flushdb()
    found.close()


def test_idle_with_messages_waiting_and_none_received_is_a_stall(client: redis.Redis) -> None:
    idle = [True]
    dog = ConsumerWatchdog(client, [QUEUE], idle=lambda: idle[0], stall_checks=3)
    assert not dog.stalled()  # nothing waiting
    client.lpush(redis_queue_keys(QUEUE)[5], b"message")  # a priority sub-list counts too
    assert [dog.stalled() for _ in range(3)] == [False, False, True]


def test_a_received_message_or_work_in_hand_resets_the_count(client: redis.Redis) -> None:
    idle = [True]
    dog = ConsumerWatchdog(client, [QUEUE], idle=lambda: idle[0], stall_checks=3)
    client.lpush(QUEUE, b"message")
    assert [dog.stalled() for _ in range(2)] == [False, False]
    dog.received()  # the consumer still reads: messages just arrived faster than it took them
    assert [dog.stalled() for _ in range(3)] == [False, False, False]
    idle[0] = False  # busy: messages wait for a free process, legitimately
    assert [dog.stalled() for _ in range(5)] == [False] * 5
    idle[0] = True
    assert [dog.stalled() for _ in range(3)] == [False, False, True]


def test_the_setting_defaults_to_five_seconds_and_zero_turns_it_off() -> None:
    assert Settings().worker.watchdog_seconds == 5.0
    assert Settings(worker={"watchdog_seconds": 0}).worker.watchdog_seconds == 0
