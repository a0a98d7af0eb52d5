"""``/dicomweb/`` through the rendered stack's real nginx: STOW-RS bodies far over the API's limit
stream to the DICOM front door's unix socket as they arrive, and a body over
``dicom.max_stow_bytes`` gets a JSON 413 from nginx without reaching it.

A small HTTP server on the front door's socket stands in for ``flaskmodel dicom`` (this is a test
of nginx's config): it records how many body bytes it has read so far and answers with the path
and the byte count.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from flaskmodel.deploy.paths import nginx_binary
from flaskmodel.deploy.supervisor_conf import render_stack
from flaskmodel.settings import Settings
from tests import procs

NGINX = nginx_binary()
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
API_LIMIT = 2000
STOW_LIMIT = 200_000

FRONT_DOOR = r'''
"""Stand-in for the front door's STOW-RS listener: reads bodies in pieces, records progress."""
import json, os, socketserver, sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path

sock, progress = sys.argv[1], Path(sys.argv[2])

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        remaining = int(self.headers["Content-Length"])
        total = 0
        while remaining:
            piece = self.rfile.read1(min(remaining, 8192))
            if not piece:
                break
            total += len(piece)
            remaining -= len(piece)
            progress.write_text(str(total))
        data = json.dumps({"path": self.path, "bytes": total}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def address_string(self):
        return "local"

class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

if os.path.exists(sock):
    os.unlink(sock)
Server(sock, Handler).serve_forever()
'''


@dataclass
class Front:
    base: str
    port: int
    progress: Path

    def received(self) -> int:
        """Body bytes the front door has read of the latest upload."""
        try:
            return int(self.progress.read_text() or 0)
        except FileNotFoundError:
            return 0


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    tmp = tmp_path_factory.mktemp("dicomweb")
    port = procs.free_port()
    settings = Settings(
        run_dir=tmp / "run",
        web={"port": port, "max_request_bytes": API_LIMIT},
        dicom={"enabled": True, "max_stow_bytes": STOW_LIMIT},
    )
    paths, _ = render_stack(settings, use_nginx=True)
    assert paths.dicom_sock and paths.nginx_conf and paths.nginx_prefix and NGINX
    script = tmp / "front_door.py"
    script.write_text(FRONT_DOOR)
    progress = tmp / "progress"
    with (tmp / "front_door.log").open("ab") as log:
        door = subprocess.Popen(
            [sys.executable, str(script), str(paths.dicom_sock), str(progress)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    conf = paths.nginx_conf
    with (tmp / "nginx.log").open("ab") as log:
        nginx = subprocess.Popen(
            [str(NGINX), "-e", "stderr", "-p", str(paths.nginx_prefix), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        procs.wait_for(paths.dicom_sock.exists, 10, "front door socket", door)
        base = f"http://127.0.0.1:{port}"
        # gunicorn is not running: the API answers nginx's 502, which shows nginx is up.
        api = base + "/healthz"
        procs.wait_for(lambda: requests.get(api, timeout=1).status_code == 502, 10, "nginx", nginx)
        yield Front(base=base, port=port, progress=progress)
    finally:
        procs.stop(nginx)
        procs.stop(door)


def test_stow_body_over_the_api_limit_reaches_the_front_door(front: Front) -> None:
    body = b"x" * (API_LIMIT * 50)
    response = requests.post(front.base + "/dicomweb/studies", data=body, timeout=10)
    assert response.status_code == 200, response.text
    # The path reaches the front door unchanged.
    assert response.json() == {"path": "/dicomweb/studies", "bytes": len(body)}


def test_stow_body_streams_before_the_upload_is_complete(front: Front) -> None:
    """Unbuffered: the front door reads the first part while the client still holds back the
    rest (nginx with request buffering would wait for the whole body first)."""
    size, first = 100_000, 30_000
    head = (
        "POST /dicomweb/studies HTTP/1.1\r\nHost: test\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {size}\r\nConnection: close\r\n\r\n"
    )
    front.progress.write_text("0")
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
        sock.sendall(head.encode() + b"y" * first)
        procs.wait_for(lambda: front.received() >= first, 10, "the first part at the front door")
        assert front.received() < size
        sock.sendall(b"y" * (size - first))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status, _, rest = answer.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 200"), answer[:500]
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body == {"path": "/dicomweb/studies", "bytes": size}


def test_stow_body_over_its_limit_gets_json_413_from_nginx(front: Front) -> None:
    front.progress.write_text("0")
    response = requests.post(
        front.base + "/dicomweb/studies", data=b"z" * (STOW_LIMIT + 1), timeout=10
    )
    assert response.status_code == 413
    assert response.headers["Content-Type"].startswith("application/json")
    # The front door's own type for a body over its limit, whichever of the two refuses it.
    assert response.json()["type"] == "payload_too_large"
    assert str(STOW_LIMIT) in response.json()["error"]
    assert front.received() == 0
