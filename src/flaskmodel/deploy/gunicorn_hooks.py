"""Gunicorn server hooks: a worker told to stop (SIGTERM) answers ``/readyz`` 503 at once.

Gunicorn imports this module in its master process, before a gevent worker monkey-patches: it
must import nothing that patching changes (Flask, redis, kombu, celery, requests; a test checks),
or those modules would keep the unpatched, blocking ``time.sleep``, locks and sockets they bound
at import, and a Redis outage would stall every request of the worker.

Gunicorn's gevent worker notices SIGTERM only on its next once-a-second loop, and until then
keeps accepting connections; then it stops accepting and lets its in-flight requests finish
(``web.graceful_timeout``). ``post_worker_init`` (a hook of the packaged config,
``gunicorn_config``, which every start of gunicorn loads) puts a handler in front of gunicorn's
own that marks the app draining first, so a load balancer polling ``/readyz`` takes the worker
out before its socket closes.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType
from typing import Any

from flaskmodel import heap
from flaskmodel.scheduling import apply_cpu_policy
from flaskmodel.settings import Settings

logger = logging.getLogger(__name__)


def on_starting(server: Any) -> None:
    """Gunicorn hook (in the master, before any worker is forked): the master takes the CPU
    policy of the settings (``scheduling``), and so do the workers it forks."""
    apply_cpu_policy(Settings().cpu_policy)


def post_worker_init(worker: Any) -> None:
    """Gunicorn hook (after the app is loaded): SIGTERM marks the app draining, then stops; the
    ``Date`` header is formatted once a second, not per response; a small response goes out in
    one send; the loaded app is exempt from the garbage collector's full passes (``heap``)."""
    _cache_http_date()
    one_send_per_response()
    heap.freeze()
    extensions = getattr(worker.wsgi, "extensions", {})
    services = extensions.get("flaskmodel")
    if services is None:
        return
    stop = worker.handle_exit

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        services.draining.set()
        logger.info("SIGTERM: draining (/readyz 503); in-flight requests finish")
        stop(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.siginterrupt(signal.SIGTERM, False)  # as gunicorn's own: no EINTR in requests


def _cache_http_date() -> None:
    """Gunicorn formats the ``Date`` header of every response with ``email.utils.formatdate``
    (about 3 % of a small predict's time in the web tier); its text changes once a second."""
    from gunicorn import util  # noqa: PLC0415 - in the worker, after patching

    if getattr(util.http_date, "cached", False):
        return
    formatted = util.http_date
    last: list[Any] = [None, ""]

    def http_date(timestamp: float | None = None) -> str:
        if timestamp is not None:
            return str(formatted(timestamp))
        now = int(time.time())
        if last[0] != now:
            last[0], last[1] = now, formatted(now)
        return str(last[1])

    http_date.cached = True  # type: ignore[attr-defined]
    util.http_date = http_date


#: Largest body sent in the same ``send`` as its headers (a larger one is not copied).
ONE_SEND_MAX_BODY = 64 * 1024


def one_send_per_response() -> None:
    """Gunicorn writes a response's headers and its body with two ``sendall`` calls, two system
    calls (and two reads for nginx) per answer; a response whose length is known and whose body
    comes in one piece up to ``ONE_SEND_MAX_BODY`` (every JSON or binary inference answer) goes
    in one. The header block is built as ``Response.send_headers`` builds it."""
    from gunicorn import util  # noqa: PLC0415 - in the worker, after patching
    from gunicorn.http.wsgi import Response  # noqa: PLC0415

    if getattr(Response.write, "one_send", False):
        return
    write = Response.write

    def one_send(self: Any, arg: Any) -> None:
        if (
            self.headers_sent
            or self.chunked
            or getattr(self, "_omits_body", False)
            or not isinstance(arg, bytes)
            or self.response_length is None
            or len(arg) > min(self.response_length, ONE_SEND_MAX_BODY)
        ):
            write(self, arg)
            return
        lines = self.default_headers()
        lines.extend([f"{k}: {v}\r\n" for k, v in self.headers])
        head = util.to_bytestring("{}\r\n".format("".join(lines)), "latin-1")
        self.headers_sent = True
        self.sent += len(arg)
        send_all(self.sock, head + arg)

    one_send.one_send = True  # type: ignore[attr-defined]
    Response.write = one_send


def send_all(sock: Any, data: bytes) -> None:
    """``sock.sendall(data)``, trying one ``send`` first: gevent's ``sendall`` asks the kernel
    for the socket's send buffer size (``getsockopt``) on every call, 2.5 % of a web worker's
    samples under M1 load; a small answer almost always goes in one ``send``."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])
