"""Reading a plain HTTP/1.x request head as gunicorn would, for ``gunicorn_worker``.

``Head.read`` takes a head (the bytes before the blank line, as latin-1 text) and gives the
request, the environ gunicorn's ``wsgi.create`` would start it with, and its body's length, or
raises ``NotPlain`` for a head outside the subset it reads (see ``gunicorn_worker``): gunicorn's
own parser takes those, and answers each as it always did. ``addresses`` adds what the connection
says (``REMOTE_*``, ``SERVER_*``), as ``wsgi.create`` does.
"""

from __future__ import annotations

import io
import os
import re
from typing import Any

from gunicorn import util
from gunicorn.http import message

#: Methods read here; any other goes to gunicorn's parser.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_VERSIONS = {"HTTP/1.1": (1, 1), "HTTP/1.0": (1, 0)}
_TARGET = re.compile(r"/[\x21\x22\x24-\x7e]*")  # origin form: printable ASCII, no "#"
# Every field line after the request line: a token without "_" for a name, a value without the
# control characters gunicorn refuses (RFC 9110 5.5: tab and obs-text allowed).
_FIELDS = re.compile(r"(?:\r\n[!#$%&'*+\-.^`|~0-9a-zA-Z]+:[^\x00-\x08\x0a-\x1f\x7f]*)*")
_ELSEWHERE = frozenset({"TRANSFER-ENCODING", "EXPECT", "UPGRADE", "HTTP2-SETTINGS"})


class NotPlain(Exception):
    """The head is outside the subset read here: gunicorn's parser takes the connection."""


class Request:
    """What gunicorn's ``Response``, hooks, access log and ``handle_error`` read of a request."""

    __slots__ = ("body", "headers", "method", "must_close", "path", "query", "uri", "version")

    def __init__(
        self,
        method: str,
        uri: str,
        version: tuple[int, int],
        headers: list[tuple[str, str]],
        must_close: bool,
    ) -> None:
        self.method = method
        self.uri = uri
        self.path, _, self.query = uri.partition("?")
        self.version = version
        self.headers = headers
        self.must_close = must_close
        self.body: io.BytesIO | None = None

    def should_close(self) -> bool:
        return self.must_close


class Head:
    """The limits gunicorn's parser holds a head to (its settings, read as it reads them)."""

    def __init__(self, cfg: Any) -> None:
        line = cfg.limit_request_line
        self.line_max = message.MAX_REQUEST_LINE if line <= 0 else min(line, 8190)
        fields = cfg.limit_request_fields
        self.fields_max = message.MAX_HEADERS if not 0 < fields <= message.MAX_HEADERS else fields
        size = cfg.limit_request_field_size
        self.field_max = size if size > 0 else message.DEFAULT_MAX_HEADERFIELD_SIZE
        self.script_name = os.environ.get("SCRIPT_NAME", "")

    def read(self, head: str, secure: dict[str, str]) -> tuple[Request, dict[str, Any], int]:
        """The request, its environ so far and its body's length, of one head (raises
        ``NotPlain``)."""
        lines = head.split("\r\n")
        line = lines[0]
        parts = line.split(" ")
        if (
            len(parts) != 3
            or len(line) > self.line_max
            or len(lines) - 1 > self.fields_max
            or not _FIELDS.fullmatch(head, len(line))
        ):
            raise NotPlain
        method, uri, protocol = parts
        version = _VERSIONS.get(protocol)
        if method not in METHODS or version is None or not _TARGET.fullmatch(uri):
            raise NotPlain
        environ: dict[str, Any] = {}
        headers: list[tuple[str, str]] = []
        scheme = self._fields(lines[1:], secure, environ, headers)
        length = int(environ.get("CONTENT_LENGTH", 0))
        connection = environ.get("HTTP_CONNECTION", "").lower()
        must_close = connection == "close" or (version < (1, 1) and connection != "keep-alive")
        request = Request(method, uri, version, headers, must_close)
        path = request.path
        script_name = self.script_name
        if script_name:
            if not path.startswith(script_name):
                raise NotPlain
            path = path[len(script_name) :]
        environ["wsgi.url_scheme"] = scheme or "http"
        environ["REQUEST_METHOD"] = method
        environ["QUERY_STRING"] = request.query
        environ["RAW_URI"] = uri
        environ["SERVER_PROTOCOL"] = protocol
        environ["PATH_INFO"] = util.unquote_to_wsgi_str(path)
        environ["SCRIPT_NAME"] = script_name
        return request, environ, length

    def _fields(
        self,
        lines: list[str],
        secure: dict[str, str],
        environ: dict[str, Any],
        headers: list[tuple[str, str]],
    ) -> str | None:
        """Header fields into ``environ`` and ``headers``; returns the scheme the trusted
        proxy's ``secure`` headers say, if any (raises ``NotPlain``)."""
        scheme = None
        for field in lines:  # each a name and a value, as _FIELDS matched them
            if len(field) + 2 > self.field_max:
                raise NotPlain
            name, _, value = field.partition(":")
            name = name.upper()
            value = value.strip(" \t")
            if name in _ELSEWHERE:
                raise NotPlain
            if name == "CONTENT-LENGTH":
                if not (value.isascii() and value.isdigit()):
                    raise NotPlain
                key = "CONTENT_LENGTH"
            elif name == "CONTENT-TYPE":
                key = "CONTENT_TYPE"
            else:
                key = "HTTP_" + name.replace("-", "_")
            if key in environ:
                raise NotPlain  # repeated: gunicorn joins or refuses them
            environ[key] = value
            if name in secure:
                said = "https" if value == secure[name] else "http"
                if scheme is not None and said != scheme:
                    raise NotPlain  # conflicting scheme headers: gunicorn answers 400
                scheme = said
            headers.append((name, value))
        return scheme


def addresses(environ: dict[str, Any], client: Any, server: Any, scheme: str) -> None:
    """``REMOTE_*`` and ``SERVER_*`` as gunicorn's ``wsgi.create`` sets them."""
    if isinstance(client, str):
        environ["REMOTE_ADDR"] = client
    elif isinstance(client, bytes):
        environ["REMOTE_ADDR"] = client.decode()
    else:
        environ["REMOTE_ADDR"] = client[0]
        environ["REMOTE_PORT"] = str(client[1])
    if isinstance(server, str):
        server = server.split(":")
        if len(server) == 1:  # a unix socket: named after the Host header
            host = environ.get("HTTP_HOST")
            if host:
                server = host.split(":")
                if len(server) == 1:
                    server.append({"http": 80, "https": 443}.get(scheme, ""))
            else:
                server.append("")
    environ["SERVER_NAME"] = server[0]
    environ["SERVER_PORT"] = str(server[1])
