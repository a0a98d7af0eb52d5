"""The web tier on several hosts, each running the real `flaskmodel serve`: the packaged gunicorn
config is in force through it (workers, keep-alive), and the rendered nginx site balances over
every host named in ``web.upstreams`` and keeps answering when one of them is down.

Two `flaskmodel serve` processes on loopback stand in for two web hosts.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from flaskmodel.deploy.gunicorn_launch import KEEPALIVE_SECONDS
from flaskmodel.deploy.paths import nginx_binary
from flaskmodel.deploy.processes import descendants
from flaskmodel.deploy.supervisor_conf import render_deploy
from flaskmodel.settings import Settings
from tests import procs

NGINX = nginx_binary()
IDLE_SECONDS = 3.0  # longer than gunicorn's own keep-alive default (2 s)


def _get_healthz(sock: socket.socket) -> bytes:
    """One keep-alive ``GET /healthz`` on ``sock``; the whole response (b"" if it was closed)."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_serve_runs_the_packaged_config(
    make_settings: Callable[..., Settings], fake_models_root: Path, tmp_path: Path
) -> None:
    """`flaskmodel serve --workers 2` runs two workers, and a connection left idle longer than
    gunicorn's default keep-alive (2 s) still serves its next request (behind nginx, a closed
    one would be a 502)."""
    assert KEEPALIVE_SECONDS > IDLE_SECONDS
    port = procs.free_port()
    web = procs.start_gunicorn(
        make_settings(models_root=fake_models_root), tmp_path / "web.log", port, workers=2
    )
    try:
        procs.wait_for(lambda: len(descendants(web.pid)) == 2, 10, "two gunicorn workers", web)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            first = _get_healthz(sock)
            assert first.startswith(b"HTTP/1.1 200"), first
            time.sleep(IDLE_SECONDS)
            again = _get_healthz(sock)
            assert again.startswith(b"HTTP/1.1 200"), again
    finally:
        procs.stop(web)


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
def test_nginx_site_balances_over_web_hosts_and_fails_over(
    make_settings: Callable[..., Settings], fake_models_root: Path, tmp_path: Path
) -> None:
    assert NGINX is not None
    ports = [procs.free_port(), procs.free_port()]
    settings = make_settings(
        models_root=fake_models_root, web={"upstreams": [f"127.0.0.1:{p}" for p in ports]}
    )
    site = render_deploy(settings, tmp_path / "deploy")[1]
    text = site.read_text()
    assert "least_conn;" in text
    for port in ports:
        assert f"server 127.0.0.1:{port} max_fails=3 fail_timeout=5s;" in text
    public = procs.free_port()
    site.write_text(text.replace("listen 80;", f"listen 127.0.0.1:{public};"))
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\nevents {{}}\n"
        f"http {{\n client_body_temp_path {prefix}/body;\n proxy_temp_path {prefix}/proxy;\n"
        f" access_log off;\n include {site};\n}}\n"
    )
    args = [str(NGINX), "-p", str(prefix), "-c", str(conf)]
    checked = subprocess.run([*args, "-t"], capture_output=True, text=True, timeout=30, check=False)
    assert checked.returncode == 0, checked.stderr
    nginx = subprocess.Popen([*args, "-g", "daemon off;"], start_new_session=True)
    webs = [procs.start_gunicorn(settings, tmp_path / f"web-{p}.log", p) for p in ports]
    url = f"http://127.0.0.1:{public}/healthz"
    try:
        procs.wait_for(lambda: requests.get(url, timeout=2).ok, 10, "nginx", nginx)
        for down in (0, 1):  # each web host alone still serves every request
            procs.stop(webs[down])
            answers = [requests.get(url, timeout=5).status_code for _ in range(10)]
            assert answers == [200] * 10, (down, answers)
            if down == 0:
                webs[0] = procs.start_gunicorn(settings, tmp_path / "web-again.log", ports[0])
                time.sleep(5.5)  # nginx skips a failed host for fail_timeout; then it is back
    finally:
        for web in webs:
            procs.stop(web)
        procs.stop(nginx)
