"""The cheaper idle check of pooled Redis connections, in a gevent-patched process as gunicorn's
workers are: idle connections are checked without gevent's poll, a pending reply is still seen,
and commands work."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import redis

from flaskmodel.storage.idle_check import quick_check_class, use_quick_check

SCRIPT = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import select, sys, time
    import redis
    from flaskmodel.storage.idle_check import _gevent_real_poll, use_quick_check

    url, key = sys.argv[1], sys.argv[2]
    client = use_quick_check(redis.Redis.from_url(url, decode_responses=True))
    client.set(key, "v")
    assert _gevent_real_poll() is not None, "gevent patched select: the real poll is found"
    gevent_poll = select.poll

    def refuse():
        raise AssertionError("an idle check went through gevent's poll")

    select.poll = refuse
    for _ in range(200):
        assert client.get(key) == "v"
    select.poll = gevent_poll
    pool = client.connection_pool
    connection = pool.get_connection()
    assert type(connection).__name__.startswith("QuickCheck")
    assert not connection.can_read(0)
    connection.send_command("GET", key)  # a reply arrives and is left unread
    time.sleep(0.2)
    assert connection.can_read(0)
    assert connection.read_response() == "v"
    assert not connection.can_read(0)
    pool.release(connection)
    connection.disconnect()  # a closed socket goes to redis-py's own check, which reconnects
    assert client.set(key, "w") and client.get(key) == "w"
    print("ok")
    """
)


def test_gevent_process_checks_idle_connections_without_the_hub_and_still_sees_replies(
    redis_url: str,
) -> None:
    key = f"test:idle-check:{uuid.uuid4().hex}"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, redis_url, key],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_without_gevent_the_check_is_redis_pys_own(redis_url: str) -> None:
    client = use_quick_check(redis.Redis.from_url(redis_url))
    key = f"test:idle-check:{uuid.uuid4().hex}"
    client.set(key, b"1")
    connection = client.connection_pool.get_connection()
    try:
        connection.send_command("GET", key)
        connection.read_response()
        assert not connection.can_read(0)
    finally:
        client.connection_pool.release(connection)
    assert client.get(key) == b"1"
    assert quick_check_class(redis.Connection) is quick_check_class(redis.Connection)
    client.close()
