"""The key/value API's store: namespaced keys, JSON values, optional TTL."""

from __future__ import annotations

import json
import re
from typing import Any

import redis

from flaskmodel.errors import InvalidRequest, KeyNotFound, PayloadTooLarge
from flaskmodel.storage.redis import key

KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")
# Redis refuses an expiry past its clock's range ("invalid expire time"); ten years is plenty.
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600


def validate_key(name: str) -> str:
    """``name`` when it is a valid key: 1-200 of ``[A-Za-z0-9._:-]``, starting alphanumeric."""
    if not KEY_PATTERN.fullmatch(name):
        raise InvalidRequest(
            f"invalid key {name[:64]!r}: use 1-200 characters of A-Z a-z 0-9 . _ : -, "
            "starting with a letter or digit"
        )
    return name


class KeyValueStore:
    """JSON values under ``flaskmodel:kv:<key>``."""

    def __init__(self, client: redis.Redis, *, default_ttl: int | None, max_value_bytes: int):
        self._redis = client
        self._default_ttl = default_ttl
        self._max_value_bytes = max_value_bytes

    def get(self, name: str) -> tuple[Any, int | None]:
        """The value and its remaining TTL in seconds (None when it has none)."""
        pipe = self._redis.pipeline()
        pipe.get(key("kv", validate_key(name)))
        pipe.ttl(key("kv", name))
        raw, ttl = pipe.execute()
        if raw is None:
            raise KeyNotFound(f"key {name!r} not found")
        return json.loads(raw), (ttl if ttl >= 0 else None)

    def put(self, name: str, value: Any, ttl: int | None = None) -> bool:
        """Store ``value``; True when the key was new."""
        validate_key(name)
        if ttl is not None and not 0 < ttl <= MAX_TTL_SECONDS:
            raise InvalidRequest(f"ttl must be 1 to {MAX_TTL_SECONDS} seconds")
        raw = json.dumps(value, separators=(",", ":"), allow_nan=False)
        if len(raw.encode()) > self._max_value_bytes:
            raise PayloadTooLarge(f"value is larger than {self._max_value_bytes} bytes")
        ttl = ttl if ttl is not None else self._default_ttl
        pipe = self._redis.pipeline()
        pipe.exists(key("kv", name))
        pipe.set(key("kv", name), raw, ex=ttl)
        existed, _ = pipe.execute()
        return not existed

    def delete(self, name: str) -> None:
        if not self._redis.delete(key("kv", validate_key(name))):
            raise KeyNotFound(f"key {name!r} not found")
