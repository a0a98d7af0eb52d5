"""``Link`` against a real Redis: commands in one round trip with their replies in order, a
command's error raised, a script Redis lost loaded again, a dropped connection reconnected, and
the client's own settings (password, database) kept."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from flaskmodel.storage.link import Link
from tests.procs import start_redis, stop

PASSWORD = "link-test-secret"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[redis.Redis]:
    """A redis-server of its own that requires a password, used on database 3."""
    proc, url = start_redis(tmp_path)
    with redis.Redis.from_url(url) as setup:
        setup.config_set("requirepass", PASSWORD)
    connection = redis.Redis.from_url(url.rsplit("/", 1)[0] + "/3", password=PASSWORD)
    yield connection
    connection.close()
    stop(proc)


@pytest.fixture
def link(client: redis.Redis) -> Iterator[Link]:
    made = Link(client)
    yield made
    made.close()


def test_commands_share_one_round_trip_on_the_clients_database(
    client: redis.Redis, link: Link
) -> None:
    key = f"test:link:{uuid.uuid4().hex}"
    replies = link.run([("RPUSH", key, b"a", b"b"), ("LRANGE", key, 0, -1), ("LLEN", key)])
    assert replies == [2, [b"a", b"b"], 2]
    assert client.lrange(key, 0, -1) == [b"a", b"b"]  # database 3, as the client's
    stats = client.info("commandstats")
    assert stats["cmdstat_rpush"]["calls"] == 1


def test_a_commands_error_is_raised_and_the_link_stays_in_step(link: Link) -> None:
    key = f"test:link:{uuid.uuid4().hex}"
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        link.run([("SET", key, "text"), ("LPUSH", key, b"x")])
    assert link.run([("GET", key)]) == [b"text"]


def test_a_script_redis_lost_is_loaded_again(client: redis.Redis, link: Link) -> None:
    script = client.register_script("return redis.call('INCR', KEYS[1])")
    key = f"test:link:{uuid.uuid4().hex}"
    client.script_flush()  # as a restart empties the script cache
    assert link.run([("EVALSHA", script.sha, 1, key)], [script]) == [1]
    assert link.run([("EVALSHA", script.sha, 1, key)], [script]) == [2]


def test_a_dropped_connection_is_made_again(client: redis.Redis, link: Link) -> None:
    assert link.run([("PING",)]) == [b"PONG"]
    client.client_kill_filter(_type="normal", skipme=True)  # every connection but this one
    assert link.run([("PING",)]) == [b"PONG"]
