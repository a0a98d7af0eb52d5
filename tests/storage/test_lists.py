"""``ListPopper``: many entries per blocking pop, with BLMPOP and on a server without it, through
the client's pool and through a ``Link`` of its own."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from flaskmodel.storage.link import Link
from flaskmodel.storage.lists import ListPopper
from tests.procs import start_redis, stop


@pytest.fixture(params=["7.0", "6.2"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[redis.Redis]:
    """A real redis-server that knows BLMPOP, and one that does not (as Redis 6.2 does not)."""
    extra = () if request.param == "7.0" else ("--rename-command", "BLMPOP", "")
    proc, url = start_redis(tmp_path, extra=extra)
    connection = redis.Redis.from_url(url)
    yield connection
    connection.close()
    stop(proc)


@pytest.fixture(params=["pool", "link"])
def popper(request: pytest.FixtureRequest, client: redis.Redis) -> Iterator[ListPopper]:
    link = Link(client) if request.param == "link" else None
    yield ListPopper(client, link)
    if link is not None:
        link.close()


def _key(name: str) -> str:
    return f"test:lists:{name}:{os.urandom(4).hex()}"


def test_pop_many_takes_what_is_queued_in_order(client: redis.Redis, popper: ListPopper) -> None:
    empty, full = _key("empty"), _key("full")
    client.rpush(full, b"a", b"b", b"c")
    assert popper.pop_many([empty, full], timeout=1, direction="LEFT", count=2) == (
        full,
        [b"a", b"b"],
    )
    assert popper.pop_many([empty, full], timeout=1, direction="RIGHT", count=5) == (full, [b"c"])
    assert popper.pop_many([empty, full], timeout=0.1, direction="LEFT", count=5) is None


def test_pop_many_wakes_on_a_push(client: redis.Redis, popper: ListPopper) -> None:
    key = _key("later")
    pusher = threading.Timer(0.2, lambda: client.lpush(key, b"x"))
    pusher.start()
    started = time.monotonic()
    got = popper.pop_many([key], timeout=5, direction="RIGHT", count=10)
    pusher.join()
    assert got == (key, [b"x"])
    assert time.monotonic() - started < 4  # woken by the push, not by the timeout
