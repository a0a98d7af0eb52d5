"""``Link``: one loop's own Redis connection, for the hot round trips of the synchronous calls.

The sync calls' four loops (a web process's sender and receiver, a worker's consumer and reply
sender) each make one round trip per wake-up, on their own thread. Through redis-py's client
every round trip also takes a connection from the pool and gives it back, builds a pipeline or
command object and runs the reply callbacks: under gevent a push took 186 µs that way and 138
µs on a link (a micro-benchmark; Redis itself spends a few µs on it). A ``Link`` holds a
connection of the client's own class and settings (password, timeouts, Sentinel's primary
lookup, the cheaper idle check) outside the pool, writes its commands in one send and reads
their replies as they come.

Not thread-safe: one loop, one link. As the pool does when it hands out a connection, a
connection that Redis closed, or that holds unread data, is made again before commands are sent;
the connection's retry policy applies as for a pipeline; and an ``EVALSHA`` that Redis answers
``NOSCRIPT`` (its script cache emptied by a restart) loads the script and runs that command
again (``storage.pipelines.rerun_lost_scripts``, as for a pipeline).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import ResponseError

from flaskmodel.storage.pipelines import rerun_lost_scripts

Command = tuple[Any, ...]


class Link:
    """``run(commands)``: their replies, in one round trip on this link's connection."""

    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        self._conn = pool.connection_class(**pool.connection_kwargs)

    def run(self, commands: Sequence[Command], scripts: Sequence[Script] = ()) -> list[Any]:
        """The replies of ``commands``, sent together; raises the first error a command got
        (after loading again each of ``scripts`` that Redis had lost)."""
        conn = self._conn
        replies: list[Any] = conn.retry.call_with_retry(
            lambda: self._round_trip(commands), lambda _: conn.disconnect()
        )
        return rerun_lost_scripts(
            replies,
            commands,
            scripts,
            lambda script: self.run([("SCRIPT", "LOAD", script.script)])[0],
            lambda _, command: self.run([tuple(command)])[0],
        )

    def close(self) -> None:
        self._conn.disconnect()

    def _round_trip(self, commands: Sequence[Command]) -> list[Any]:
        conn = self._conn
        try:
            stale = conn.can_read()  # closed by Redis (readable: EOF), or out of step
        except redis.ConnectionError:
            stale = True
        if stale:
            conn.disconnect()
        conn.send_packed_command(conn.pack_commands(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except ResponseError as exc:  # the command's error; the link is still in step
                replies.append(exc)
        return replies
