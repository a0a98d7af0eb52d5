"""Celery Flower, started the documented way (``celery -A flaskmodel.worker.app flower`` with
the settings in the environment), monitors the real worker (events on: ``worker.send_events``)."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

import pytest
import requests

from tests import procs
from tests.conftest import Stack
from tests.metrics.conftest import run_job, tensor_job

pytestmark = pytest.mark.e2e


def test_flower_sees_the_worker_and_its_tasks(observed_stack: Stack) -> None:
    port = procs.free_port()
    log = observed_stack.logs / "flower.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASKMODEL_")}
    env.update(observed_stack.settings.env())
    env["FLOWER_UNAUTHENTICATED_API"] = "true"
    args = [
        str(procs.VENV_BIN / "celery"),
        "-A",
        "flaskmodel.worker.app",
        "flower",
        "--address=127.0.0.1",
        f"--port={port}",
    ]
    with log.open("ab") as handle:
        flower = subprocess.Popen(
            args, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        procs.wait_for(lambda: requests.get(base + "/healthcheck", timeout=1).ok, 30, "flower")
        workers: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while not workers and time.monotonic() < deadline:
            workers = requests.get(base + "/api/workers?refresh=1", timeout=20).json()
        assert any(name.startswith("flaskmodel@") for name in workers), workers
        job_id = str(run_job(observed_stack, tensor_job())["job_id"])
        deadline = time.monotonic() + 30
        task: dict[str, Any] = {}
        while task.get("state") != "SUCCESS" and time.monotonic() < deadline:
            time.sleep(0.3)
            task = requests.get(base + "/api/tasks", timeout=10).json().get(job_id, {})
        assert task.get("state") == "SUCCESS", (task, log.read_text()[-2000:])
        assert task["name"] == "flaskmodel.run_job"
    finally:
        procs.stop(flower)
