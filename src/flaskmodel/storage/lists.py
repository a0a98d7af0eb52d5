"""Blocking pops of many list entries in one round trip.

``pop_many`` waits for the first of ``keys`` to hold entries and takes up to ``count`` of them
with one ``BLMPOP`` (Redis 7.0+). On an older server (``BLMPOP`` unknown) it falls back to
``BLPOP``/``BRPOP`` for the first entry and ``LPOP``/``RPOP`` with a count for the rest: one round
trip more per wake-up, which is what the hot receive loops cost before. With a ``Link`` (a loop's
own connection) the ``BLMPOP`` goes through it.
"""

from __future__ import annotations

from typing import Literal, cast

import redis

from flaskmodel.storage.link import Link

Direction = Literal["LEFT", "RIGHT"]


class ListPopper:
    """``pop_many`` for one client; remembers whether the server knows ``BLMPOP``."""

    def __init__(self, client: redis.Redis, link: Link | None = None) -> None:
        self._redis = client
        self._link = link
        self._blmpop = True

    def pop_many(
        self, keys: list[str], *, timeout: float, direction: Direction, count: int
    ) -> tuple[str, list[bytes]] | None:
        """The key that had entries and up to ``count`` of them, or None after ``timeout``."""
        if self._blmpop:
            try:
                if self._link is not None:
                    command = ("BLMPOP", timeout, len(keys), *keys, direction, "COUNT", count)
                    (popped,) = self._link.run([command])
                else:
                    popped = self._redis.blmpop(
                        timeout, len(keys), *keys, direction=direction, count=count
                    )
            except redis.ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                self._blmpop = False
            else:
                if popped is None:
                    return None
                key, values = popped
                return _text(cast("bytes", key)), list(cast("list[bytes]", values))
        block = self._redis.blpop if direction == "LEFT" else self._redis.brpop
        first = block(keys, timeout=timeout)
        if first is None:
            return None
        key = _text(first[0])
        pop = self._redis.lpop if direction == "LEFT" else self._redis.rpop
        more = pop(key, count - 1) if count > 1 else None
        return key, [first[1], *(more or [])]


def _text(key: bytes | str) -> str:
    return key.decode() if isinstance(key, bytes) else key
