"""The web tier on several hosts: the rendered nginx site balances over every gunicorn named in
``web.upstreams`` and keeps answering when one of them is down.

Two gunicorns on loopback stand in for two web hosts (each is what `flaskmodel serve` runs).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from flaskmodel.deploy.render import nginx_binary, render_deploy
from flaskmodel.settings import Settings
from tests import procs

NGINX = nginx_binary()


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
def test_nginx_site_balances_over_web_hosts_and_fails_over(
    make_settings: Callable[..., Settings], fake_models_root: Path, tmp_path: Path
) -> None:
    assert NGINX is not None
    ports = [procs.free_port(), procs.free_port()]
    settings = make_settings(
        models_root=fake_models_root, web={"upstreams": [f"127.0.0.1:{p}" for p in ports]}
    )
    site = render_deploy(settings, tmp_path / "deploy")[2]
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
