"""API-key authentication and per-caller rate limits, checked before every request by both
adapters of the route table (the Flask app's hook and the fast WSGI layer) with ``authorize``.

Open to anyone (no key, no rate limit): the routes the table marks ``open`` (the health probes)
and, served by Flask alone, the API description, Swagger UI and the results viewer's static
files (``OPEN_ENDPOINTS``; the data the viewer shows comes from the API, which needs a key).
Every other request, unknown paths included, is checked in this order:

1. The caller: the id of the API key it presented (``Authorization: Bearer <key>`` or
   ``X-API-Key``); with authentication off, ``anonymous``.
2. The rate limit, when on: counted per key id; for callers without a valid key (authentication
   off, or a missing/wrong key) per client address, so guessing keys is rate limited too.
3. With authentication on and no valid key: ``401`` with ``WWW-Authenticate: Bearer``.

Handlers get the caller as ``Call.owner``: the key id jobs are recorded under, or None when
authentication is off (then every job is everyone's).
"""

from __future__ import annotations

import ipaddress
import logging

from flaskmodel.errors import RateLimited, Unauthorized
from flaskmodel.web.apikeys import presented_key
from flaskmodel.web.services import Services

logger = logging.getLogger(__name__)

#: Endpoints of the Flask-only views (not in the route table) that are open.
OPEN_ENDPOINTS = frozenset(
    {
        "openapi.openapi_json",
        "openapi.openapi_30_json",
        "openapi.docs",
        "openapi.docs_asset",
        "ui.ui_redirect",
        "ui.ui_index",
        "ui.ui_asset",
    }
)


def authorize(
    svc: Services,
    authorization: str | None,
    api_key: str | None,
    peer: str | None,
    forwarded_for: str | None,
) -> str | None:
    """The caller's key id (None: authentication off), from its ``Authorization`` and
    ``X-API-Key`` headers, or raise ``RateLimited`` / ``Unauthorized``. ``peer`` and
    ``forwarded_for`` (``REMOTE_ADDR``, ``X-Forwarded-For``) name a caller without a key."""
    keys, limiter = svc.keys, svc.rate_limiter
    if limiter is None and not keys.enabled:
        return None
    key_id = keys.identify(presented_key(authorization, api_key))
    if limiter is not None:
        caller = (
            f"key:{key_id}" if key_id is not None else f"addr:{client_address(peer, forwarded_for)}"
        )
        wait = limiter.check(caller)
        if wait is not None:
            security = svc.settings.security
            raise RateLimited(
                f"rate limit of {security.rate_limit_per_second:g} requests per "
                f"second (burst {security.rate_limit_burst}) reached; retry in {wait:.2f} s",
                retry_after=wait,
            )
    if keys.enabled and key_id is None:
        raise Unauthorized(
            "a valid API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        )
    return key_id


def client_address(peer: str | None, forwarded_for: str | None) -> str:
    """The caller's address: the peer's, or behind a local proxy (a loopback or unix-socket
    peer, as with nginx in front) the address that proxy appended to ``X-Forwarded-For``."""
    peer = peer or ""
    if _is_local(peer):
        last = (forwarded_for or "").rsplit(",", 1)[-1].strip()
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
