"""Redis connections: one pool per process, built from Settings by a composition root.

With ``redis.sentinel_master`` the URL lists Redis Sentinels (kombu's spelling,
``sentinel://h1:26379;sentinel://h2:26379/<db>``): clients ask them for the current primary and
find the new one after a failover (redis-py's ``Sentinel.master_for``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis
from redis.sentinel import Sentinel

from flaskmodel.settings import Settings
from flaskmodel.storage import bulk_pack
from flaskmodel.storage.idle_check import use_quick_check

NAMESPACE = "flaskmodel:"


def connect(settings: Settings) -> redis.Redis:
    """A Redis client with its own connection pool and the configured timeouts (and, in a gevent
    process, a cheaper idle check: ``idle_check``; a large argument packed without a copy:
    ``bulk_pack``)."""
    options: dict[str, Any] = {
        "password": _password(settings),
        "socket_timeout": settings.redis.socket_timeout,
        "socket_connect_timeout": settings.redis.connect_timeout,
        "max_connections": settings.redis.max_connections,
        "health_check_interval": 30,
        # One quick retry on a dropped connection; a dead Redis must still fail fast.
        "retry_on_timeout": False,
        "decode_responses": True,
        **bulk_pack.OPTIONS,
    }
    if settings.redis.sentinel_master:
        return use_quick_check(_primary(settings, options))
    return use_quick_check(redis.Redis.from_url(settings.redis_url(), **options))


def connect_frames(settings: Settings, *, max_connections: int) -> redis.Redis:
    """A binary client (``decode_responses=False``) for the synchronous protocol's frames.

    Its pool blocks for a free connection instead of failing (every waiting call holds one for
    its ``BLPOP``), and its socket timeout outlasts the longest deadline a call may ask for:
    Redis answers a ``BLPOP`` only when its own timeout is up. (Behind Sentinel the pool does
    not block: past ``max_connections`` a call fails.)
    """
    options: dict[str, Any] = {
        "password": _password(settings),
        "socket_timeout": settings.batching.max_timeout_seconds + settings.redis.socket_timeout,
        "socket_connect_timeout": settings.redis.connect_timeout,
        "max_connections": max_connections,
        "health_check_interval": 30,
        "decode_responses": False,
        **bulk_pack.OPTIONS,
    }
    if settings.redis.sentinel_master:
        return use_quick_check(_primary(settings, options))
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url(), timeout=settings.redis.socket_timeout, **options
    )
    return use_quick_check(redis.Redis(connection_pool=pool))


def sentinel_addresses(url: str) -> tuple[list[tuple[str, int]], int]:
    """The Sentinels and the database of ``sentinel://h1:26379;sentinel://h2:26379/<db>``."""
    hosts = []
    db = 0
    for part in url.split(";"):
        parsed = urlsplit(part.strip())
        hosts.append((parsed.hostname or "127.0.0.1", parsed.port or 26379))
        if parsed.path.strip("/"):
            db = int(parsed.path.strip("/"))
    return hosts, db


def _primary(settings: Settings, options: dict[str, Any]) -> redis.Redis:
    assert settings.redis.sentinel_master is not None
    hosts, db = sentinel_addresses(settings.redis_url())
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        hosts,
        socket_timeout=settings.redis.socket_timeout,
        socket_connect_timeout=settings.redis.connect_timeout,
    )
    master = settings.redis.sentinel_master
    client: redis.Redis = sentinel.master_for(master, db=db, **options)  # type: ignore[no-untyped-call]
    return client


def _password(settings: Settings) -> str | None:
    if settings.redis.password:
        return settings.redis.password.get_secret_value()
    return urlsplit(settings.redis_url().split(";")[0]).password


def key(*parts: str) -> str:
    """A namespaced key: ``key("kv", name)`` -> ``flaskmodel:kv:<name>``."""
    return NAMESPACE + ":".join(parts)
