"""API-key authentication and per-caller rate limits, run before every request.

Open to anyone (no key, no rate limit): the health probes, the API description and Swagger UI,
and the results viewer's static files (the data it shows comes from the API, which needs a key).
Every other request, unknown paths included, is checked in this order:

1. The caller: the id of the API key it presented (``Authorization: Bearer <key>`` or
   ``X-API-Key``); with authentication off, ``anonymous``.
2. The rate limit, when on: counted per key id; for callers without a valid key (authentication
   off, or a missing/wrong key) per client address, so guessing keys is rate limited too.
3. With authentication on and no valid key: ``401`` with ``WWW-Authenticate: Bearer``.

Views read the caller with ``owner()``: the key id jobs are recorded under, or None when
authentication is off (then every job is everyone's).
"""

from __future__ import annotations

import ipaddress
import logging

from flask import Flask, g, request

from flaskmodel.errors import RateLimited, Unauthorized
from flaskmodel.web.apikeys import KeyRing, presented_key
from flaskmodel.web.ratelimit import RateLimiter
from flaskmodel.web.services import services

logger = logging.getLogger(__name__)

OPEN_ENDPOINTS = frozenset(
    {
        "health.healthz",
        "health.readyz",
        "infer_v2.live",
        "infer_v2.ready",
        "openapi.openapi_json",
        "openapi.openapi_30_json",
        "openapi.docs",
        "openapi.docs_asset",
        "ui.ui_redirect",
        "ui.ui_index",
        "ui.ui_asset",
    }
)


def init_auth(app: Flask) -> None:
    app.before_request(check_request)


def check_request() -> None:
    if request.endpoint in OPEN_ENDPOINTS:
        return
    svc = services()
    keys: KeyRing = svc.keys
    key_id = keys.identify(
        presented_key(request.headers.get("Authorization"), request.headers.get("X-API-Key"))
    )
    limiter: RateLimiter | None = svc.rate_limiter
    if limiter is not None:
        caller = f"key:{key_id}" if key_id is not None else f"addr:{client_address()}"
        wait = limiter.check(caller)
        if wait is not None:
            raise RateLimited(
                f"rate limit of {svc.settings.security.rate_limit_per_second:g} requests per "
                f"second (burst {svc.settings.security.rate_limit_burst}) reached; "
                f"retry in {wait:.2f} s",
                retry_after=wait,
            )
    if keys.enabled and key_id is None:
        raise Unauthorized(
            "a valid API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        )
    g.owner = key_id


def owner() -> str | None:
    """The key id of this request's caller; None when authentication is off."""
    found: str | None = g.get("owner")
    return found


def client_address() -> str:
    """The caller's address: the peer's, or behind a local proxy (a loopback or unix-socket
    peer, as with nginx in front) the address that proxy appended to ``X-Forwarded-For``."""
    peer = request.remote_addr or ""
    if _is_local(peer):
        forwarded = request.headers.get("X-Forwarded-For", "")
        last = forwarded.rsplit(",", 1)[-1].strip()
        if last:
            return last[:64]
    return peer or "local"


def _is_local(address: str) -> bool:
    if not address:
        return True  # a unix socket
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
