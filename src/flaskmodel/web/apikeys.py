"""API keys: which configured key, if any, a request presented.

Keys come from ``security.api_keys`` and ``security.api_keys_file``, each entry ``<key>`` or
``<name> <key>``. A key's *id* is its name, or ``key-`` and the first 12 hex digits of its
SHA-256 when it has none; the id (never the key) is what job records store as their owner and
what rate limits count against. Only SHA-256 digests of the keys are kept in memory, and a
presented key is compared with every one of them by ``hmac.compare_digest`` (no early exit), so
the time an answer takes says nothing about how close a guess came. A key that matched is
remembered (until the keys change), so its caller's next requests skip the hashing: every request
of a secured deployment asks, and the digest cost a tenth of the fast routes' own CPU. Only valid
keys are remembered, and the settings hold them anyway. The file is re-read when its
modification time or size changes (checked at most once a second).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from dataclasses import dataclass

from flaskmodel.settings import SecuritySettings

logger = logging.getLogger(__name__)

_RECHECK_SECONDS = 1.0
_MIN_KEY_LENGTH = 16


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    digest: bytes


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_entry(entry: str, where: str) -> ApiKey:
    """One ``<key>`` or ``<name> <key>`` entry; raises ValueError naming ``where``."""
    parts = entry.split()
    if len(parts) == 1:
        key = parts[0]
        key_id = "key-" + digest(key).hex()[:12]
    elif len(parts) == 2:
        key_id, key = parts
    else:
        raise ValueError(f"{where}: expected '<key>' or '<name> <key>'")
    if len(key) < _MIN_KEY_LENGTH or not key.isprintable():
        raise ValueError(f"{where}: a key must be at least {_MIN_KEY_LENGTH} printable characters")
    return ApiKey(key_id=key_id, digest=digest(key))


def parse_lines(text: str, source: str) -> list[ApiKey]:
    keys = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            keys.append(parse_entry(line, f"{source} line {number}"))
    return keys


class KeyRing:
    """The configured keys; ``identify`` maps a presented key to its id."""

    def __init__(self, settings: SecuritySettings) -> None:
        self._inline = [
            parse_entry(k.get_secret_value(), f"security.api_keys[{i}]")
            for i, k in enumerate(settings.api_keys)
        ]
        self._file = settings.api_keys_file
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        _check_unique(self._inline)
        # The keys, and the presented keys that matched one of them (-> its id): swapped as one.
        self._keys: tuple[list[ApiKey], dict[str, str]] = (self._inline, {})
        if self._file is not None:
            self._reload(force=True)
        self.enabled = bool(self._keys[0]) or self._file is not None
        if self.enabled:
            logger.info("API-key authentication on (%d keys)", len(self._keys[0]))

    def identify(self, presented: str | None) -> str | None:
        """The id of the key ``presented``, or None when it is none of them."""
        if self._file is not None:
            self._reload()
        if not presented:
            return None
        keys, known = self._keys
        found = known.get(presented)
        if found is not None:
            return found
        wanted = digest(presented)
        for key in keys:  # every key compared, whether or not one matched already
            if hmac.compare_digest(wanted, key.digest):
                found = key.key_id
        if found is not None:
            known[presented] = found
        return found

    def _reload(self, *, force: bool = False) -> None:
        assert self._file is not None
        now = time.monotonic()
        if not force and now - self._checked < _RECHECK_SECONDS:
            return
        with self._lock:
            self._checked = now
            try:
                info = self._file.stat()
            except OSError as exc:
                if force:
                    raise ValueError(f"cannot read API keys file {self._file}: {exc}") from exc
                logger.warning("API keys file %s unreadable (%s); keys kept", self._file, exc)
                return
            stamp = (info.st_mtime, info.st_size)
            if stamp == self._stamp:
                return
            try:
                loaded = parse_lines(self._file.read_text("utf-8"), str(self._file))
                _check_unique(self._inline + loaded)
            except (OSError, ValueError) as exc:
                if force:
                    raise ValueError(str(exc)) from exc
                logger.warning("API keys file %s not reloaded: %s", self._file, exc)
                return
            self._keys = (self._inline + loaded, {})
            self._stamp = stamp
            if not force:
                logger.info("API keys reloaded from %s (%d keys)", self._file, len(self._keys[0]))


def _check_unique(keys: list[ApiKey]) -> None:
    seen: set[str] = set()
    for key in keys:
        if key.key_id in seen:
            raise ValueError(f"API key name {key.key_id!r} is used twice")
        seen.add(key.key_id)


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None
