"""Redis connections: one pool per process, built from Settings by a composition root."""

from __future__ import annotations

import logging

import redis

from flaskmodel.settings import Settings

logger = logging.getLogger(__name__)

NAMESPACE = "flaskmodel:"


def connect(settings: Settings) -> redis.Redis:
    """A Redis client with its own connection pool and the configured timeouts."""
    password = settings.redis.password.get_secret_value() if settings.redis.password else None
    return redis.Redis.from_url(
        settings.redis_url(),
        password=password,
        socket_timeout=settings.redis.socket_timeout,
        socket_connect_timeout=settings.redis.connect_timeout,
        max_connections=settings.redis.max_connections,
        health_check_interval=30,
        # One quick retry on a dropped connection; a dead Redis must still fail fast.
        retry_on_timeout=False,
        decode_responses=True,
    )


def connect_frames(settings: Settings, *, max_connections: int) -> redis.Redis:
    """A binary client (``decode_responses=False``) for the synchronous protocol's frames.

    Its pool blocks for a free connection instead of failing (every waiting call holds one for
    its ``BLPOP``), and its socket timeout outlasts the longest deadline a call may ask for:
    Redis answers a ``BLPOP`` only when its own timeout is up.
    """
    password = settings.redis.password.get_secret_value() if settings.redis.password else None
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url(),
        password=password,
        socket_timeout=settings.batching.max_timeout_seconds + settings.redis.socket_timeout,
        socket_connect_timeout=settings.redis.connect_timeout,
        max_connections=max_connections,
        timeout=settings.redis.socket_timeout,
        health_check_interval=30,
        decode_responses=False,
    )
    return redis.Redis(connection_pool=pool)


def key(*parts: str) -> str:
    """A namespaced key: ``key("job", id)`` -> ``flaskmodel:job:<id>``."""
    return NAMESPACE + ":".join(parts)
