"""``metrics.port`` through real nginx in front of real gunicorn: ``/metrics`` answers on its own
port only (for ``metrics.allow``), the API port answers it the JSON 404, and the metrics port
serves nothing else."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from flaskmodel.deploy.gunicorn_launch import gunicorn_command
from flaskmodel.deploy.nginx_conf import deploy_site
from flaskmodel.deploy.paths import nginx_binary
from flaskmodel.deploy.supervisor_conf import render_stack
from flaskmodel.settings import Settings
from tests import databases, procs
from tests.conftest import redis_db

NGINX = nginx_binary()
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")


@dataclass
class Ports:
    api: str
    metrics: str


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Ports]:
    tmp = tmp_path_factory.mktemp("nginx-metrics")
    api_port, metrics_port = procs.free_port(), procs.free_port()
    settings = Settings(
        run_dir=tmp / "run",
        models_root=tmp,
        data_root=tmp,
        # Only gunicorn's request counters are written there; no test reads that database's
        # totals exactly.
        redis={"url": redis_db(redis_url, databases.NGINX_LIMITS)},
        web={"port": api_port, "workers": 1, "graceful_timeout": 2},
        metrics={"port": metrics_port, "allow": ["127.0.0.1"]},
    )
    paths, effective = render_stack(settings, use_nginx=True)
    assert paths.gunicorn_sock and paths.nginx_conf and paths.nginx_prefix and NGINX
    command = gunicorn_command(effective, bind=f"unix:{paths.gunicorn_sock}")
    gunicorn = procs.spawn(command, effective, tmp / "gunicorn.log")
    conf = str(paths.nginx_conf)
    with (tmp / "nginx.log").open("ab") as nginx_log:
        nginx = subprocess.Popen(
            [str(NGINX), "-e", "stderr", "-p", str(paths.nginx_prefix), "-c", conf],
            stdout=nginx_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api = f"http://127.0.0.1:{api_port}"
    try:
        procs.wait_for(
            lambda: requests.get(api + "/healthz", timeout=1).status_code == 200,
            30,
            "nginx and gunicorn",
            nginx,
        )
        yield Ports(api=api, metrics=f"http://127.0.0.1:{metrics_port}")
    finally:
        procs.stop(nginx)
        procs.stop(gunicorn)


def test_metrics_answer_on_their_own_port(ports: Ports) -> None:
    assert requests.get(ports.api + "/healthz", timeout=5).status_code == 200
    response = requests.get(ports.metrics + "/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(response.text)}
    # gunicorn's totals (the /healthz above among them) and the answering process's own figures.
    assert {"flaskmodel_http_requests", "process_cpu_seconds", "process_open_fds"} <= names


def test_the_api_port_answers_metrics_404_json(ports: Ports) -> None:
    response = requests.get(ports.api + "/metrics", timeout=5)
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["type"] == "not_found"


@pytest.mark.parametrize("path", ["/healthz", "/v1/jobs", "/metrics/", "/openapi.json"])
def test_the_metrics_port_serves_nothing_else(ports: Ports, path: str) -> None:
    response = requests.get(ports.metrics + path, timeout=5)
    assert response.status_code == 404
    assert response.json()["type"] == "not_found"


def test_allow_applies_on_the_metrics_port_and_deploy_listens_on_it() -> None:
    settings = Settings(metrics={"port": 9102, "allow": ["10.0.0.0/8"]})
    site = deploy_site(settings, upstreams=["10.0.0.5:8000"], dicom=None)
    api, _, metrics = site.partition("\nserver {\n    listen 9102;")
    assert metrics, site
    assert "allow 10.0.0.0/8;" in metrics and "deny all;" in metrics
    assert "allow 10.0.0.0/8;" not in api
    assert "location = /metrics { return 404; }" in api


def test_the_api_port_is_refused_as_metrics_port(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path, web={"port": 8123}, metrics={"port": 8123})
    with pytest.raises(ValueError, match=r"metrics\.port 8123"):
        render_stack(settings, use_nginx=True)
