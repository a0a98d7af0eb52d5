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


def key(*parts: str) -> str:
    """A namespaced key: ``key("job", id)`` -> ``flaskmodel:job:<id>``."""
    return NAMESPACE + ":".join(parts)
