"""``LeanGeventWorker``: gunicorn's gevent worker with a short keep-alive loop for plain requests.

Behind nginx every request is alike: a request line in origin form, a few well-formed header
fields, a body of known length. Gunicorn's own loop spends more CPU on such a request than the
app's fast routes do on a predict: its parser with its unreader and body readers,
``wsgi.create``, the per-request environ base, two ``datetime.now()``. With an app answering a
fixed reply, a worker spent about 125 µs of CPU per request in gunicorn's loop and 53 in this
one (benchmarks/README.md). This worker reads a connection's bytes itself, and serves each
request whose head it can take in one glance:

- a request line ``METHOD /target HTTP/1.1`` (or ``1.0``) with a method of
  ``http_head.METHODS`` and a target of printable ASCII without a fragment, within
  ``limit_request_line``;
- header fields of token names without ``_`` (gunicorn drops or refuses those by
  ``header_map``), each name once, values without control characters, within
  ``limit_request_fields`` and ``limit_request_field_size``; no ``Transfer-Encoding``,
  ``Expect`` or ``Upgrade``;
- a ``Content-Length`` body of at most ``BODY_MAX`` bytes, read whole before the app runs.

The environ is the one gunicorn's ``wsgi.create`` builds for that request (a test sends the same
requests to both workers and compares), the scheme from the trusted proxy's
``secure_scheme_headers`` as gunicorn decides it, and the answer is written by gunicorn's own
``Response``, with the same hooks, access log, ``max_requests`` and error handling as gunicorn's
``handle_request``. A request outside that subset is never refused here: its bytes, and every
request after it on that connection, go to gunicorn's own parser and loop, which answers it as
it always did (400s, 100-continue, chunked bodies, bodies streamed to the app). TLS, HTTP/2 and
the PROXY protocol configurations take gunicorn's loop from the start.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import socket
from datetime import datetime
from typing import Any

from gevent import Timeout
from gunicorn import config, util
from gunicorn.http import message, wsgi
from gunicorn.workers.ggevent import GeventWorker

from flaskmodel.deploy.http_head import Head, NotPlain, Request, addresses

#: Largest body read whole before the app runs (nginx holds as much in memory:
#: ``client_body_buffer_size``); a larger one is streamed to the app by gunicorn.
BODY_MAX = 8 * 1024 * 1024
#: Bytes read while looking for the end of a head before gunicorn's parser takes over.
HEAD_MAX = 64 * 1024
_RECV = 64 * 1024


class _Replayed:
    """A client socket whose first reads return bytes already taken off it."""

    def __init__(self, sock: Any, data: bytes) -> None:
        self._sock = sock
        self._data = data

    def recv(self, size: int, *args: Any) -> bytes:
        if self._data:
            data, self._data = self._data[:size], self._data[size:]
            return data
        fresh: bytes = self._sock.recv(size, *args)
        return fresh

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _LiveErrors(wsgi.WSGIErrorsWrapper):  # type: ignore[misc]
    """``wsgi.errors`` of every request of a worker: gunicorn's wrapper of its error log's
    streams, looked up at each write (gunicorn makes one per request, so a log file reopened
    on ``USR1`` is the new one; a write to ``wsgi.errors`` is rare, a request is not)."""

    def __init__(self, cfg: Any) -> None:  # gunicorn's own skips io's __init__ too
        self._cfg = cfg
        self.streams: list[Any] = []

    def write(self, data: Any) -> None:
        self.streams = wsgi.WSGIErrorsWrapper(self._cfg).streams
        super().write(data)


class _Peer(message.HeaderPolicy):  # type: ignore[misc]
    """gunicorn's own decision of what a peer may set (``forwarded_allow_ips``)."""

    def __init__(self, cfg: Any, peer_addr: Any) -> None:
        self.cfg = cfg
        self.peer_addr = peer_addr


class LeanGeventWorker(GeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker; plain requests served by ``_serve`` (see the module docstring)."""

    def init_process(self) -> None:
        cfg = self.cfg
        # what gunicorn's loop does before or around HTTP/1 parsing: its own loop does it all
        self._lean = not (
            cfg.is_ssl
            or not cfg.keepalive
            or cfg.proxy_protocol != "off"
            or "h2" in cfg.http_protocols
            or cfg.protocol != "http"
        )
        self._head = Head(cfg)
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        cfg = self.cfg
        # gunicorn's default hooks: pre_request logs at debug level, post_request does nothing
        quiet = not self.log.error_log.isEnabledFor(logging.DEBUG)
        default_pre = cfg.pre_request is config.PreRequest.default
        self._pre_request = None if default_pre and quiet else cfg.pre_request
        default_post = cfg.post_request is config.PostRequest.default
        self._post_request = None if default_post else cfg.post_request
        self._base = wsgi.base_environ(cfg)  # what every request's environ starts from
        self._base["wsgi.errors"] = _LiveErrors(cfg)
        self._base["wsgi.multithread"] = True  # as gunicorn's async workers set it

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        if not self._lean:
            super().handle(listener, client, addr)
            return
        try:
            rest = self._serve(listener, client, addr)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
            rest = None
        except BaseException as exc:  # noqa: BLE001 - as gunicorn's handle: a 500 if it can
            self.handle_error(None, client, addr, exc)
            rest = None
        if rest is None:
            util.close(client)
        else:  # gunicorn's loop from here on, the bytes already read first
            super().handle(listener, _Replayed(client, rest), addr)

    def _serve(self, listener: Any, client: Any, addr: Any) -> bytes | None:
        """Serve requests until the connection ends (None) or one is outside the subset (the
        bytes read and not served, for gunicorn's parser)."""
        server = listener.getsockname()
        secure, _ = _Peer(self.cfg, addr)._peer_trusted_for_forwarded()
        buf = b""
        # gunicorn's keep-alive timeout on reading a head (its timeout_ctx), one timer a connection
        idle = Timeout(self.cfg.keepalive)
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                idle.start()
                try:
                    while end < 0 and len(buf) <= HEAD_MAX:
                        data = client.recv(_RECV)
                        if not data:
                            return None  # closed, at a request's start or in its head
                        buf += data
                        end = buf.find(b"\r\n\r\n", max(len(buf) - len(data) - 3, 0))
                except Timeout as timeout:
                    if timeout is not idle:
                        raise
                    return None  # idle past keepalive: closed, as gunicorn does
                finally:
                    idle.cancel()
                if end < 0:
                    return buf  # too long for a head here: gunicorn's parser says why
            try:
                req, environ, length = self._head.read(buf[:end].decode("latin-1"), secure)
            except NotPlain:
                return buf
            if length > BODY_MAX:
                return buf
            start, stop = end + 4, end + 4 + length
            if len(buf) >= stop:
                body: _Body | None = _Body(buf[start:stop])
                buf = buf[stop:]
            else:
                body, buf = _read_rest(client, buf[start:], length), b""
            if body is None:
                return None  # the client went away mid-body
            if not self._respond(req, environ, body, client, addr, server):
                return None

    def _respond(
        self,
        req: Request,
        environ: dict[str, Any],
        body: _Body,
        client: Any,
        addr: Any,
        server: Any,
    ) -> bool:
        """Run the app on one request and write its answer (gunicorn's ``handle_request``);
        False once the connection is to close."""
        started = datetime.now() if self.log.access_log_enabled else None
        req.body = body
        resp = None
        try:
            if self._pre_request is not None:
                self._pre_request(self, req)
            resp = wsgi.Response(req, client, self.cfg)
            _complete(environ, self._base, req, resp, client, addr, server)
            self._count(resp)
            respiter = self.wsgi(environ, resp.start_response)
            try:
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)
                resp.close()
            finally:
                if started is not None:
                    self.log.access(resp, req, environ, datetime.now() - started)
                if hasattr(respiter, "close"):
                    respiter.close()
            return not resp.should_close()
        except OSError:
            raise
        except (Exception, SystemExit) as exc:
            if resp is not None and resp.headers_sent:
                self.log.exception("Error handling request")
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_RDWR)
            else:
                self.handle_error(req, client, addr, exc)
            return False
        finally:
            if self._post_request is not None:
                try:
                    self._post_request(self, req, environ, resp)
                except Exception:  # as gunicorn: a hook's failure is only logged
                    self.log.exception("Exception in post_request hook")

    def _count(self, resp: Any) -> None:
        """gunicorn's ``max_requests``: the worker restarts after this many requests."""
        self.nr += 1
        if self.nr >= self.max_requests and self.alive:  # type: ignore[has-type]
            self.log.info("Autorestarting worker after current request.")
            self.alive = False
        if not self.alive:
            resp.force_close()


def _complete(
    environ: dict[str, Any],
    base: dict[str, Any],
    req: Request,
    resp: Any,
    client: Any,
    addr: Any,
    server: Any,
) -> None:
    """The rest of what gunicorn's ``wsgi.create`` puts in the environ."""
    environ.update(base)
    environ["wsgi.input"] = req.body
    environ["gunicorn.socket"] = client
    addresses(environ, addr, server, environ["wsgi.url_scheme"])
    environ["wsgi.early_hints"] = wsgi._make_early_hints_callback(req, client, resp)


class _Body(io.BytesIO):
    """``wsgi.input`` of a request read here: its body, let go of once read to its end.

    The app keeps what it read for as long as it needs it; this stream would otherwise hold the
    body until the answer is written, and a request waits on the workers after reading it (a CT
    slice as JSON is 1.5 MB, and 64 such requests waited at once in the benchmark). Read to its
    end, the stream is empty, so a seek back reads nothing.
    """

    def __init__(self, body: bytes) -> None:
        super().__init__(body)
        self._size = len(body)

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        if self.tell() >= self._size:
            self.truncate(0)  # drops the stream's reference to the body, copying nothing
        return data


def _read_rest(client: Any, have: bytes, length: int) -> _Body | None:
    """The body of ``length`` bytes whose first bytes are ``have``; None at EOF before it."""
    body = bytearray(length)
    view = memoryview(body)
    got = len(have)
    view[:got] = have
    while got < length:
        read = client.recv_into(view[got:])
        if not read:
            return None
        got += read
    return _Body(bytes(body))
