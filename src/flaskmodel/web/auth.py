"""API-key authentication and per-caller rate limits, checked before every request by both
adapters of the route table (the Flask app's hook and the fast WSGI layer) with one ``Gate``.

Open to anyone (no key, no rate limit): the routes the table marks ``open`` (the health probes)
and, served by Flask alone, the API description, Swagger UI and the results viewer's static
files (``OPEN_ENDPOINTS``; the data the viewer shows comes from the API, which needs a key).
Every other request, unknown paths included, is checked in this order:

1. The caller: the id of the API key it presented (``Authorization: Bearer <key>`` or
   ``X-API-Key``); with authentication off, ``anonymous``.
2. The rate limit, when on: counted per key id; for callers without a valid key (authentication
   off, or a missing/wrong key) per client address (``TrustedProxies``), so guessing keys is rate
   limited too. Every answer after the count carries the bucket's ``RateLimit-Policy`` and
   ``RateLimit`` fields (``web.ratelimit``), a 429 ``Retry-After`` as well.
3. With authentication on and no valid key: ``401`` with ``WWW-Authenticate: Bearer``.

Handlers get the caller as ``Call.owner``: the key id jobs are recorded under, or None when
authentication is off (then every job is everyone's).

A route whose handler counts its request itself (``Route.counts_itself``: the sync calls, whose
count rides with the push of their frame) gets the count as a ``Ticket`` (``Call.rate``) instead
of a decision, when the caller may pass otherwise; the adapter then settles it (``settle``) once
the handler is done, for the header fields and, when the handler never counted it, the count.
"""

from __future__ import annotations

import ipaddress
from typing import Any, NamedTuple

from flaskmodel.errors import FlaskModelError, Unauthorized
from flaskmodel.storage.gcra import Ticket
from flaskmodel.web.apikeys import presented_key
from flaskmodel.web.ratelimit import Headers
from flaskmodel.web.services import Services

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

# The most X-Forwarded-For entries read: a longer chain costs no more (only trusted hops are
# skipped, so a chain longer than this is believed no further back than its last entries).
_MAX_HOPS = 16
_ADDRESS_CHARS = 64
# Answers kept per (peer, X-Forwarded-For): parsing addresses costs a few µs, and a caller's pair
# repeats. Bounded (emptied when full, short headers only): a flood of distinct pairs costs a
# parse each, as without.
_MEMO_SIZE = 4096
_MEMO_CHARS = 256


class Admission(NamedTuple):
    """The gate's answer: the caller's key id (None: authentication off), the rate-limit header
    fields of every answer to it, the error to answer instead (None: let it through), and the
    rate-limit count left to the handler (``ticket``; then the fields come from ``settle``)."""

    owner: str | None
    headers: Headers
    refusal: FlaskModelError | None
    ticket: Ticket | None = None


_OPEN = Admission(None, (), None)
IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class TrustedProxies:
    """Who a request is from: ``client(peer, forwarded_for)`` with werkzeug ``ProxyFix``'s rule
    for ``X-Forwarded-For``, by address instead of by count (``web.trusted_proxies``). A request
    from a trusted peer is from the right-most address of the header that is not trusted (the
    left-most when all are); one from any other peer, from the peer, whatever it sends."""

    def __init__(self, entries: list[str]) -> None:
        self._unix = "unix:" in entries
        self._networks = tuple(
            ipaddress.ip_network(entry, strict=False) for entry in entries if entry != "unix:"
        )
        self._memo: dict[tuple[str | None, str | None], str] = {}

    def client(self, peer: str | None, forwarded_for: str | None) -> str:
        try:
            return self._memo[peer, forwarded_for]
        except KeyError:
            pass
        found = self._client(peer, forwarded_for)
        if len(forwarded_for or "") <= _MEMO_CHARS:
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[peer, forwarded_for] = found
        return found

    def _client(self, peer: str | None, forwarded_for: str | None) -> str:
        ip, address = _parse(peer or "")
        # An empty peer is a unix socket (gunicorn's REMOTE_ADDR there).
        if forwarded_for and (self._trusted(ip) if address else self._unix):
            found = ""
            for hop in reversed(forwarded_for.rsplit(",", _MAX_HOPS)[-_MAX_HOPS:]):
                hop_ip, hop_address = _parse(hop.strip())
                if hop_address:
                    found = hop_address
                    if not self._trusted(hop_ip):
                        break
            if found:
                return found[:_ADDRESS_CHARS]
        return address[:_ADDRESS_CHARS] or "local"

    def _trusted(self, ip: IP | None) -> bool:
        return ip is not None and any(ip in network for network in self._networks)


def _parse(address: str) -> tuple[IP | None, str]:
    """An address and the text its bucket is named by: IPv4-mapped IPv6 as IPv4, IPv6
    compressed, a port a proxy appended (``1.2.3.4:5678``, ``[2001:db8::1]:80``) dropped; what
    is no address, as sent."""
    text = address
    if address.startswith("["):
        text = address[1:].partition("]")[0]
    elif address.count(":") == 1:
        text = address.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None, address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, str(ip)


class Gate:
    """``admit(environ)``: the ``Admission`` of one request (both adapters call it);
    ``settle(ticket)``: the header fields and refusal of a count left to the handler."""

    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self.proxies = TrustedProxies(svc.settings.web.trusted_proxies)

    def admit(self, environ: dict[str, Any], *, defer: bool = False) -> Admission:
        """``defer``: the handler may count the request (the ``Ticket`` of an ``Admission``
        that lets the caller through)."""
        svc = self._svc
        keys, limiter = svc.keys, svc.rate_limiter
        if limiter is None and not keys.enabled:
            return _OPEN
        key_id = keys.identify(
            presented_key(environ.get("HTTP_AUTHORIZATION"), environ.get("HTTP_X_API_KEY"))
        )
        headers: Headers = ()
        if limiter is not None:
            if key_id is not None:
                caller = f"key:{key_id}"
            else:
                forwarded = environ.get("HTTP_X_FORWARDED_FOR")
                caller = f"addr:{self.proxies.client(environ.get('REMOTE_ADDR'), forwarded)}"
            ticket = limiter.ticket(caller)
            if defer and (key_id is not None or not keys.enabled):
                return Admission(key_id, headers, None, ticket)
            headers, refusal = self.settle(ticket)
            if refusal is not None:
                return Admission(key_id, headers, refusal)
        if keys.enabled and key_id is None:
            unknown = Unauthorized(
                "a valid API key is required: send 'Authorization: Bearer <key>' or "
                "'X-API-Key: <key>'"
            )
            return Admission(None, headers, unknown)
        return Admission(key_id, headers, None)

    def settle(self, ticket: Ticket) -> tuple[Headers, FlaskModelError | None]:
        """The rate-limit header fields of ``ticket``'s request, counted now unless it was
        already, and the refusal to answer when the count refused it."""
        limiter = self._svc.rate_limiter
        assert limiter is not None  # only a limiter makes tickets
        wait, headers = limiter.verdict(ticket)
        return headers, None if wait is None else limiter.bucket.refusal(wait)
