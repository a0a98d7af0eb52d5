"""Start and stop the front door in one process: the Storage SCP and the STOW-RS HTTP listener.

Owns ``start_receiver``: one ``InstanceStore`` on ``settings.data_root`` (stale spooled files
swept first), the SCP on ``dicom.host:port`` and waitress serving the gateway app on
``dicom.http_host:http_port`` or on a unix socket, each in its own threads, both calling the one
``on_stored``; the returned ``Receiver`` tells the ports and stops both. waitress buffers a request
body to disk before the app reads it, and refuses one over ``dicom.max_stow_bytes`` (declared or
streamed) before buffering it; that refusal, like waitress's other protocol errors, is answered in
our JSON error shape (``_JsonErrorTask``) instead of waitress's plain text.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask
from waitress.wasyncore import close_all

from flaskmodel.dicom.network.scp import StorageScp, start_scp
from flaskmodel.dicom.network.store import InstanceStore, OnStored
from flaskmodel.gateway.app import create_gateway_app
from flaskmodel.settings import Settings

logger = logging.getLogger(__name__)

_HTTP_THREADS = 4
_STOP_TIMEOUT = 5.0


class _JsonErrorTask(ErrorTask):  # type: ignore[misc]
    """waitress's answer to a request it refuses itself (body over the limit, malformed HTTP),
    in the JSON shape of every other error: ``{"error": ..., "type": ...}``."""

    def execute(self) -> None:
        error = self.request.error
        if error.code == 413:
            message = f"request body is larger than the limit of {self.channel.limit} bytes"
            type_ = "payload_too_large"
        else:
            message = f"{error.reason}: {error.body}"
            type_ = error.reason.lower().replace(" ", "_")
            if error.code == 400:
                type_ = "invalid_request"
        body = json.dumps({"error": message, "type": type_}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


def _json_error_channel(limit: int) -> type[Any]:
    """waitress's HTTP channel answering its own errors with ``_JsonErrorTask``."""
    attributes = {"error_task_class": _JsonErrorTask, "limit": limit}
    return type("JsonErrorChannel", (HTTPChannel,), attributes)


@dataclass
class Receiver:
    """The running front door. ``http_port`` is ``None`` when it serves on a unix socket."""

    store: InstanceStore
    scp: StorageScp
    http_server: Any
    http_thread: threading.Thread
    http_port: int | None
    unix_socket: Path | None
    _stopped: threading.Event

    @property
    def scp_port(self) -> int:
        return self.scp.port

    def stop(self) -> None:
        """Stop taking requests, let running ones finish (up to a few seconds), close both.
        Stopping twice is harmless."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.http_server.close()
        self.http_server.task_dispatcher.shutdown(timeout=_STOP_TIMEOUT)
        close_all(self.http_server._map)
        self.http_thread.join(_STOP_TIMEOUT)
        self.scp.stop()
        logger.info("DICOM receiver stopped")

    def wait(self) -> None:
        """Block until the HTTP listener ends (after ``stop`` from another thread)."""
        self.http_thread.join()


def start_receiver(
    settings: Settings, on_stored: OnStored, *, unix_socket: Path | None = None
) -> Receiver:
    """Start the SCP and the STOW-RS listener (see the module doc) and return at once."""
    dicom = settings.dicom
    store = InstanceStore(settings.data_root)
    store.sweep_incoming()
    app = create_gateway_app(store, on_stored, max_stow_bytes=dicom.max_stow_bytes)
    scp = start_scp(dicom, store, on_stored)
    try:
        listen: dict[str, Any] = (
            {"unix_socket": str(unix_socket), "unix_socket_perms": "660"}
            if unix_socket is not None
            else {"host": dicom.http_host, "port": dicom.http_port}
        )
        server = create_server(
            app,
            # waitress refuses a body of exactly its limit; ours is the largest allowed.
            max_request_body_size=dicom.max_stow_bytes + 1,
            threads=_HTTP_THREADS,
            ident="flaskmodel-dicom",
            **listen,
        )
    except BaseException:
        scp.stop()
        raise
    server.channel_class = _json_error_channel(dicom.max_stow_bytes)
    stopped = threading.Event()
    thread = threading.Thread(target=_serve, args=(server, stopped), name="stow-http", daemon=True)
    thread.start()
    http_port = None if unix_socket is not None else int(server.effective_port)
    logger.info(
        "DICOM receiver: SCP %s on port %d, STOW-RS on %s",
        dicom.ae_title,
        scp.port,
        unix_socket if unix_socket is not None else f"{dicom.http_host}:{http_port}",
    )
    return Receiver(store, scp, server, thread, http_port, unix_socket, stopped)


def _serve(server: Any, stopped: threading.Event) -> None:
    """Run waitress's loop. ``stop`` closes its sockets from another thread, so the loop's
    ``select`` may then fail on a closed descriptor: after ``stop`` that is the loop's end."""
    try:
        server.run()
    except (OSError, ValueError):
        if not stopped.is_set():
            raise
