"""What a route's handler gets and gives, with no web framework in between.

A handler takes the app's ``Services`` and a ``Call`` (one request as plain values: path
parameters, query, the headers its route declares, the body on demand, the caller's key id) and
returns a ``Reply``, ``(status, body, headers)``, or raises an error from ``flaskmodel.errors``.
Both adapters of the route table (the Flask views and the fast WSGI layer) build the ``Call``
from the WSGI environ with ``make_call`` and write the reply with ``encode``, so a route answers
the same bytes whichever of them serves it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from werkzeug.wsgi import get_input_stream

from flaskmodel.codecs import compact_json
from flaskmodel.storage.gcra import Ticket

JSON = "application/json"


class Raw(NamedTuple):
    """A body that is not JSON: its bytes and media type (V2 binary tensors, PNG, text)."""

    data: bytes
    content_type: str


#: ``(status, body, headers)``; the body is JSON-able, ``Raw``, or None (no body, e.g. 204).
Reply = tuple[int, Any, dict[str, str]]

_NO_QUERY: Mapping[str, str] = {}


@dataclass(frozen=True, slots=True)
class Call:
    """One request as a handler sees it."""

    params: Mapping[str, Any]  # path parameters, converted by the rule (``<int:start>`` an int)
    query: Mapping[str, str]  # the first value of each query parameter
    headers: Mapping[str, str]  # the headers the route declares that the request has
    body: Callable[[], bytes]  # reads the body once (413 past ``web.max_request_bytes``)
    owner: str | None = None  # the caller's API key id; None with authentication off
    script_root: str = ""  # where the app is mounted (URLs it answers start with it)
    #: The request's rate-limit count, left to the handler (``Route.counts_itself``): made with
    #: its sync call's push, or by ``Ticket.admit`` before anything else with an effect.
    rate: Ticket | None = None


def environ_keys(headers: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``(environ key, header name)`` of each header name, as ``make_call`` looks them up."""
    return tuple(("HTTP_" + name.upper().replace("-", "_"), name) for name in headers)


def make_call(
    environ: dict[str, Any],
    params: Mapping[str, Any],
    headers: tuple[tuple[str, str], ...],
    owner: str | None,
    limit: int,
    rate: Ticket | None = None,
) -> Call:
    """The ``Call`` of a WSGI request (``headers`` from ``environ_keys``; ``limit``: the most
    body bytes read; ``rate``: a count left to the handler)."""
    query = environ.get("QUERY_STRING")
    return Call(
        params,
        parse_query(query) if query else _NO_QUERY,
        {name: environ[key] for key, name in headers if key in environ},
        partial(read_body, environ, limit),
        owner,
        environ.get("SCRIPT_NAME", "").rstrip("/"),  # as werkzeug's ``script_root``
        rate,
    )


def parse_query(query: str) -> dict[str, str]:
    """The first value of each parameter of a WSGI ``QUERY_STRING`` (its bytes as latin-1 text,
    read as UTF-8 as werkzeug does; a byte that is not UTF-8 becomes U+FFFD)."""
    text = query.encode("latin-1").decode("utf-8", "replace")
    found: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True, errors="replace"):
        found.setdefault(name, value)
    return found


def read_body(environ: dict[str, Any], limit: int) -> bytes:
    """The request body as werkzeug reads it for Flask: 413 past ``limit`` bytes; a chunked body
    read to its end when the server terminates the stream, else nothing."""
    length = environ.get("CONTENT_LENGTH", "")
    if length.isascii() and length.isdigit() and "HTTP_TRANSFER_ENCODING" not in environ:
        size = int(length)
        if size <= limit:
            return bytes(environ["wsgi.input"].read(size))
    return get_input_stream(environ, max_content_length=limit).read()


def encode(reply: Reply) -> tuple[int, list[tuple[str, str]], bytes]:
    """The status, headers and bytes a reply is sent as."""
    status, body, extra = reply
    if body is None:
        data, content_type = b"", None
    elif isinstance(body, Raw):
        data, content_type = body
    else:
        data, content_type = compact_json.dumps(body, newline=True), JSON
    headers = [("Content-Type", content_type)] if content_type else []
    if status not in (204, 304):  # they have no body, so no length (RFC 9110)
        headers.append(("Content-Length", str(len(data))))
    headers.extend(extra.items())
    return status, headers, data
