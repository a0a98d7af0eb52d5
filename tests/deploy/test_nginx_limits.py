"""nginx's limits, with the shipped configs in front of real gunicorn: a slow-loris client and a
stalled upload are cut off, and an oversized body gets a JSON 413, all without reaching gunicorn
(its access log, which records every request it sees, never names them)."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from flaskmodel.deploy.gunicorn_launch import gunicorn_command
from flaskmodel.deploy.paths import nginx_binary
from flaskmodel.deploy.supervisor_conf import render_stack
from flaskmodel.settings import Settings
from tests import databases, procs
from tests.conftest import redis_db

NGINX = nginx_binary()
pytestmark = [
    pytest.mark.reliability,
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed"),
]
TIMEOUT = 1.0  # nginx's client_header_timeout and client_body_timeout here
MAX_BODY = 2000


@dataclass
class Front:
    base: str
    port: int
    gunicorn_log: Path
    gunicorn: subprocess.Popen[bytes]

    def reached_gunicorn(self, marker: str) -> bool:
        return marker in self.gunicorn_log.read_text(errors="replace")


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Front]:
    tmp = tmp_path_factory.mktemp("nginx-limits")
    port = procs.free_port()
    settings = Settings(
        run_dir=tmp / "run",
        models_root=tmp,
        data_root=tmp,
        redis={"url": redis_db(redis_url, databases.NGINX_LIMITS)},
        web={
            "port": port,
            "max_request_bytes": MAX_BODY,
            "client_header_timeout": TIMEOUT,
            "client_body_timeout": TIMEOUT,
            "workers": 1,
            "graceful_timeout": 2,
        },
    )
    paths, effective = render_stack(settings, use_nginx=True)
    assert paths.gunicorn_sock and paths.nginx_conf and paths.nginx_prefix and NGINX
    log = tmp / "gunicorn.log"
    # Behind nginx the shipped stack leaves gunicorn's access log off; here it is the witness of
    # which requests reached gunicorn.
    command = gunicorn_command(effective, bind=f"unix:{paths.gunicorn_sock}", access_log=True)
    gunicorn = procs.spawn(command, effective, log)
    conf = str(paths.nginx_conf)
    with (tmp / "nginx.log").open("ab") as nginx_log:  # the child keeps its own descriptor
        nginx = subprocess.Popen(
            [str(NGINX), "-e", "stderr", "-p", str(paths.nginx_prefix), "-c", conf],
            stdout=nginx_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        procs.wait_for(
            lambda: requests.get(base + "/healthz", timeout=1).status_code == 200,
            30,
            "nginx and gunicorn",
            nginx,
        )
        yield Front(base=base, port=port, gunicorn_log=log, gunicorn=gunicorn)
    finally:
        procs.stop(nginx)
        procs.stop(gunicorn)


def closed_after(sock: socket.socket, dribble: bytes | None, limit: float) -> float | None:
    """Seconds until the server closes ``sock`` while we send ``dribble`` every 0.2 s (or
    nothing); None when it is still open after ``limit``."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < limit:
        try:
            if dribble is not None:
                sock.sendall(dribble)
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - started
    return None


def test_requests_within_the_limits_reach_gunicorn(front: Front) -> None:
    marker = f"ok-{uuid.uuid4().hex}"
    assert requests.get(f"{front.base}/healthz?{marker}", timeout=5).status_code == 200
    procs.wait_for(lambda: front.reached_gunicorn(marker), 5, "access log line")


def test_slow_loris_headers_are_cut_off_before_gunicorn(front: Front) -> None:
    marker = f"slowloris-{uuid.uuid4().hex}"
    with socket.create_connection(("127.0.0.1", front.port)) as sock:
        sock.sendall(f"GET /healthz?{marker} HTTP/1.1\r\nHost: test\r\n".encode())
        # One more header line every 0.2 s: never a complete head.
        seconds = closed_after(sock, b"X-Slow: 1\r\n", limit=8 * TIMEOUT)
    print(f"\nslow-loris head cut off after {seconds} s (client_header_timeout {TIMEOUT} s)")
    assert seconds is not None, "nginx kept a slow-loris connection open"
    assert TIMEOUT * 0.8 <= seconds <= TIMEOUT * 4
    time.sleep(0.3)
    assert not front.reached_gunicorn(marker)


def test_stalled_and_dribbled_bodies_never_reach_gunicorn(front: Front) -> None:
    marker = f"stalled-{uuid.uuid4().hex}"
    head = (
        f"POST /v1/kv/{marker}?{marker} HTTP/1.1\r\nHost: test\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", front.port)) as sock:
        sock.sendall(head.encode() + b'{"value": "' + b"x" * 100)
        seconds = closed_after(sock, None, limit=8 * TIMEOUT)
    print(f"\nstalled body cut off after {seconds} s (client_body_timeout {TIMEOUT} s)")
    assert seconds is not None and TIMEOUT * 0.8 <= seconds <= TIMEOUT * 4
    # A body dribbled a byte at a time stays in nginx's buffer: gunicorn sees nothing of it.
    dribbled = f"dribbled-{uuid.uuid4().hex}"
    with socket.create_connection(("127.0.0.1", front.port)) as sock:
        sock.sendall(head.replace(marker, dribbled).encode())
        assert closed_after(sock, b"x", limit=2 * TIMEOUT) is None
        assert not front.reached_gunicorn(dribbled)
    time.sleep(0.3)
    assert not front.reached_gunicorn(marker)


def test_oversized_body_gets_json_413_from_nginx(front: Front) -> None:
    marker = f"oversized-{uuid.uuid4().hex}"
    response = requests.put(
        f"{front.base}/v1/kv/big?{marker}",
        data=b'{"value": "' + b"x" * (MAX_BODY * 3) + b'"}',
        timeout=10,
    )
    print(f"\noversized body: {response.status_code} {response.text.strip()}")
    assert response.status_code == 413
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["type"] == "request_entity_too_large"
    assert str(MAX_BODY) in response.json()["error"]
    time.sleep(0.3)
    assert not front.reached_gunicorn(marker)


def test_the_apps_own_errors_pass_through_nginx(front: Front) -> None:
    """nginx answers its own errors as JSON but never replaces the app's: gunicorn's 404 and
    503 (no worker is ready) reach the client as the app wrote them."""
    marker = uuid.uuid4().hex
    missing = requests.get(f"{front.base}/v1/jobs/{marker}", timeout=10)
    assert missing.status_code == 404
    assert missing.json()["type"] == "job_not_found" and marker in missing.json()["error"]
    ready = requests.get(f"{front.base}/readyz", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable" and ready.json()["redis"] == "ok"
    assert ready.headers["Retry-After"] == "5"  # the app's, not nginx's 2


def test_upstream_down_is_json_502(front: Front) -> None:
    procs.stop(front.gunicorn)
    response = requests.get(f"{front.base}/healthz", timeout=10)
    assert response.status_code == 502
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["type"] == "bad_gateway"
    assert response.headers["Retry-After"] == "2"
