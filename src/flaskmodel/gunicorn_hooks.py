"""Gunicorn server hooks: a worker told to stop (SIGTERM) answers ``/readyz`` 503 at once.

Gunicorn imports this module in its master process, before a gevent worker monkey-patches: it
must import nothing that patching changes (Flask, redis, kombu, celery, requests; a test checks),
or those modules would keep the unpatched, blocking ``time.sleep``, locks and sockets they bound
at import, and a Redis outage would stall every request of the worker.

Gunicorn's gevent worker notices SIGTERM only on its next once-a-second loop, and until then
keeps accepting connections; then it stops accepting and lets its in-flight requests finish
(``web.graceful_timeout``). ``post_worker_init`` (imported by the shipped ``gunicorn.conf.py``;
``--config python:flaskmodel.gunicorn_hooks`` on a command line) puts a handler in front of
gunicorn's own that marks the app draining first, so a load balancer polling ``/readyz`` takes
the worker out before its socket closes.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)


def post_worker_init(worker: Any) -> None:
    """Gunicorn hook (after the app is loaded): SIGTERM marks the app draining, then stops."""
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
