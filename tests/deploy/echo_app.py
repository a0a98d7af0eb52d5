"""A WSGI app that answers with what it was given, for comparing gunicorn workers
(``test_gunicorn_worker``): its environ as JSON (objects by type, the body by length, digest and
how many references besides the app's the server still holds to it) and which loop read the
request (``X-Input``), or, by path, answers whose framing gunicorn writes differently."""

from __future__ import annotations

import hashlib
import io
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

StartResponse = Callable[..., Any]


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/raise":
        raise RuntimeError("the app failed before answering")
    if path == "/raise-late":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _fails_midway()
    if path == "/errors":  # a line for the server's error log
        environ["wsgi.errors"].write(environ["QUERY_STRING"] + "\n")
        environ["wsgi.errors"].flush()
    if path == "/no-content":
        start_response("204 No Content", [])
        return [b""]
    body = environ["wsgi.input"].read()
    # References to the body besides this one: the server's, if it still holds what was read.
    held = sys.getrefcount(body) - 2 if len(body) > 1 else None  # shorter ones are shared
    seen = {
        key: value if isinstance(value, (str, int, bool, list, tuple)) else type(value).__name__
        for key, value in environ.items()
        if key not in _WHOSE
    }
    seen["body"] = [len(body), hashlib.sha256(body).hexdigest()[:16], held]
    answer = json.dumps(seen, sort_keys=True).encode()
    headers = [("Content-Type", "application/json"), ("X-Input", _input(environ))]
    if path == "/chunked":  # no Content-Length: gunicorn frames it
        start_response("200 OK", headers)
        return [answer[:10], answer[10:]]
    start_response("200 OK", [*headers, ("Content-Length", str(len(answer)))])
    return [answer]


#: What differs by the worker that read the request (``X-Input`` says which did; the lean
#: worker's ``wsgi.errors`` is its own class, checked by writing to it).
_WHOSE = ("wsgi.input", "gunicorn.socket", "wsgi.errors")


def _input(environ: dict[str, Any]) -> str:
    """``lean`` when the lean loop read the body (a ``BytesIO``), else ``gunicorn``."""
    return "lean" if isinstance(environ["wsgi.input"], io.BytesIO) else "gunicorn"


def _fails_midway() -> Iterator[bytes]:
    yield b"partial "
    raise RuntimeError("the app failed while answering")
