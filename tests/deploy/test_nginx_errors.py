"""nginx's own errors through the rendered stack's real nginx: every status nginx answers itself
(malformed requests, an over-long URI, a huge header, a body over the limit, upstream down or too
slow, refused methods and codings) is JSON ``{"error", "type"}`` with ``Content-Type:
application/json``, on ``/dicomweb/`` too, while the app's own answers, errors included, pass
through untouched.

A small HTTP server on gunicorn's socket stands in for the app (this is a test of nginx's
config): ``/slow`` answers after 3 s, ``/hangup`` closes the connection without an answer,
``/app/<status>`` answers that status with a JSON body and headers of its own. Nothing runs on the
DICOM front door's socket, so ``/dicomweb/`` finds its upstream down.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from flaskmodel.deploy.paths import nginx_binary
from flaskmodel.deploy.supervisor_conf import render_stack
from flaskmodel.settings import Settings
from tests import procs

NGINX = nginx_binary()
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
MAX_BODY = 2000
STOW_LIMIT = 200_000
TIMEOUT = 1.0  # client_body_timeout, and the read timeout towards the app (shortened below)

APP = r'''
"""Stand-in for the app on gunicorn's socket: slow, hanging up, or answering its own errors."""
import json, os, socketserver, sys, time
from http.server import BaseHTTPRequestHandler

sock = sys.argv[1]

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/slow":
            time.sleep(3)
        if self.path.startswith("/hangup"):
            self.close_connection = True
            return
        status = int(self.path.split("/")[2]) if self.path.startswith("/app/") else 200
        data = json.dumps({"error": f"the app's own {status}", "type": "app_own"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Retry-After", "7")
        self.send_header("X-From", "app")
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
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Front:
    base: str
    port: int

    def raw(self, request: bytes) -> Answer:
        """Send ``request`` as it is and read the answer until nginx closes the connection."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(request)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        return Answer(int(lines[0].split(" ")[1]), headers, body)


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    tmp = tmp_path_factory.mktemp("nginx-errors")
    port = procs.free_port()
    settings = Settings(
        run_dir=tmp / "run",
        web={"port": port, "max_request_bytes": MAX_BODY, "client_body_timeout": TIMEOUT},
        dicom={"enabled": True, "max_stow_bytes": STOW_LIMIT},
        metrics={"allow": ["192.0.2.1"]},
    )
    paths, _ = render_stack(settings, use_nginx=True)
    assert paths.gunicorn_sock and paths.nginx_conf and paths.nginx_prefix and NGINX
    # The shipped read timeout is the job time limit plus 30 s; shortened so that the app's
    # stand-in is "too slow" within a second.
    site = paths.nginx_prefix / "flaskmodel.conf"
    shipped = f"proxy_read_timeout {settings.jobs.time_limit + 30}s;"
    assert shipped in site.read_text()
    site.write_text(site.read_text().replace(shipped, f"proxy_read_timeout {TIMEOUT:g}s;"))
    script = tmp / "app.py"
    script.write_text(APP)
    with (tmp / "app.log").open("ab") as log:
        app = subprocess.Popen(
            [sys.executable, str(script), str(paths.gunicorn_sock)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    conf = str(paths.nginx_conf)
    with (tmp / "nginx.log").open("ab") as log:
        nginx = subprocess.Popen(
            [str(NGINX), "-e", "stderr", "-p", str(paths.nginx_prefix), "-c", conf],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        procs.wait_for(paths.gunicorn_sock.exists, 10, "the app's stand-in", app)
        procs.wait_for(lambda: requests.get(base, timeout=1).ok, 10, "nginx", nginx)
        yield Front(base=base, port=port)
    finally:
        procs.stop(nginx)
        procs.stop(app)


def assert_nginx_json(answer: Answer | requests.Response, status: int, type_: str) -> str:
    """``answer`` is one of nginx's own: ``status``, JSON of exactly ``error`` and ``type``;
    returns the message."""
    if isinstance(answer, requests.Response):
        answer = Answer(answer.status_code, dict(answer.headers), answer.content)
    assert answer.status == status, answer
    assert answer.headers["Content-Type"] == "application/json", answer
    body = json.loads(answer.body)
    assert set(body) == {"error", "type"} and body["type"] == type_, body
    return str(body["error"])


@pytest.mark.parametrize(
    "head",
    [
        "GET /v1/jobs/a%00b HTTP/1.1\r\nHost: test",  # a NUL in the path
        "GET /v1/kv/..%2F..%2F..%2Fetc%2Fpasswd HTTP/1.1\r\nHost: test",  # climbs above /
        "GET /v1/%2e%2e/%2e%2e/x.html HTTP/1.1\r\nHost: test",
        "GARBAGE",
        "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b",
        "GET /healthz HTTP/1.1",  # HTTP/1.1 without Host
        "POST /dicomweb/studies HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz",
    ],
)
def test_malformed_requests_get_json_400(front: Front, head: str) -> None:
    request = head if "\r\n\r\n" in head else f"{head}\r\nConnection: close\r\n\r\n"
    assert_nginx_json(front.raw(request.encode()), 400, "bad_request")


def test_an_over_long_uri_gets_json_414(front: Front) -> None:
    answer = front.raw(b"GET /v1/jobs/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: test\r\n\r\n")
    assert_nginx_json(answer, 414, "request_uri_too_long")


@pytest.mark.parametrize("header", [b"Cookie: " + b"c" * 9000, b"X-Big: " + b"b" * 9000])
def test_a_huge_header_gets_json_431(front: Front, header: bytes) -> None:
    answer = front.raw(b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + header + b"\r\n\r\n")
    assert_nginx_json(answer, 431, "request_header_fields_too_large")


def test_bodies_over_the_limits_get_json_413(front: Front) -> None:
    # An extension nginx's types know must not change the answer's type.
    for path in ("/v1/jobs", "/v1/kv/page.html"):
        response = requests.put(front.base + path, data=b"x" * (MAX_BODY + 1), timeout=10)
        message = assert_nginx_json(response, 413, "request_entity_too_large")
        assert message == f"request body is larger than the limit of {MAX_BODY} bytes"
    response = requests.post(
        front.base + "/dicomweb/studies", data=b"z" * (STOW_LIMIT + 1), timeout=10
    )
    message = assert_nginx_json(response, 413, "payload_too_large")  # as the front door says
    assert str(STOW_LIMIT) in message


@pytest.mark.parametrize(
    ("request_head", "status", "type_"),
    [
        ("TRACE /healthz HTTP/1.1", 405, "method_not_allowed"),
        ("POST /v1/jobs HTTP/1.1\r\nTransfer-Encoding: gzip", 501, "not_implemented"),
        ("GET /healthz HTTP/2.0", 505, "http_version_not_supported"),
        ("GET /metrics HTTP/1.1", 403, "forbidden"),  # metrics.allow names another address
        ("GET /_flaskmodel/error/502 HTTP/1.1", 404, "not_found"),  # internal only
        ("GET /_flaskmodel/error/dicomweb/413 HTTP/1.1", 404, "not_found"),
    ],
)
def test_other_refusals_are_json(front: Front, request_head: str, status: int, type_: str) -> None:
    head = f"{request_head}\r\nHost: test\r\nConnection: close\r\n\r\n"
    assert_nginx_json(front.raw(head.encode()), status, type_)


def test_an_app_that_hangs_up_or_is_too_slow_gets_json_502_and_504(front: Front) -> None:
    for path in ("/hangup", "/hangup/thumbnail.png", "/hangup.html"):
        response = requests.get(front.base + path, timeout=10)
        assert "web tier" in assert_nginx_json(response, 502, "bad_gateway")
        assert response.headers["Retry-After"] == "2"
    started = time.monotonic()
    response = requests.get(front.base + "/slow", timeout=10)
    assert_nginx_json(response, 504, "gateway_timeout")
    assert time.monotonic() - started < 3, "nginx waited for the app's late answer"


def test_a_front_door_that_is_down_gets_json_502(front: Front) -> None:
    response = requests.post(front.base + "/dicomweb/studies", data=b"dicom", timeout=10)
    assert "DICOM front door" in assert_nginx_json(response, 502, "bad_gateway")
    assert response.headers["Retry-After"] == "2"


@pytest.mark.parametrize("status", [400, 404, 413, 500, 502, 503, 504])
def test_the_apps_own_errors_pass_through_untouched(front: Front, status: int) -> None:
    response = requests.get(f"{front.base}/app/{status}", timeout=10)
    assert response.status_code == status
    assert response.json() == {"error": f"the app's own {status}", "type": "app_own"}
    assert response.headers["X-From"] == "app" and response.headers["Retry-After"] == "7"


def test_a_stalled_body_gets_no_answer_at_all(front: Front) -> None:
    """A client that stops sending its body is cut off (408) without an answer, so without
    nginx's HTML page: nothing to make JSON."""
    head = b"PUT /v1/kv/stalled HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n"
    started = time.monotonic()
    answer = b""
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
        sock.sendall(head + b'{"value": ')
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer == b""
    assert TIMEOUT * 0.8 <= time.monotonic() - started <= TIMEOUT * 4
