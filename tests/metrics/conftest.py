"""An observed stack of its own: two gunicorn workers, JSON-lines logs, Celery events on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from flaskmodel.demo.build import DEMO_SERIES_UID
from flaskmodel.settings import Settings
from tests import databases
from tests.conftest import Stack, populate_data_root, redis_db, running_stack

TINY_ROW = [0.1] * 32


@pytest.fixture(scope="session")
def observed_stack(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, models_root: Path
) -> Iterator[Stack]:
    """Redis database 9 (its metrics are this stack's alone), a worker and two gunicorn
    workers, metrics flushed every 0.2 s."""
    logs = tmp_path_factory.mktemp("observed-logs")
    data_root = tmp_path_factory.mktemp("observed-data")
    populate_data_root(data_root)
    settings = Settings(
        models_root=models_root,
        data_root=data_root,
        run_dir=logs,
        redis={"url": redis_db(redis_url, databases.METRICS)},
        worker={"heartbeat_seconds": 1.0, "concurrency": 1, "send_events": True},
        metrics={"flush_seconds": 0.2},
        log={"json_lines": True},
    )
    with running_stack(settings, logs, web_workers=2) as stack:
        yield stack


def run_job(stack: Stack, body: dict[str, object]) -> dict[str, object]:
    """Submit a job and wait for its end; returns the finished job."""
    submitted = requests.post(stack.url("/v1/jobs"), json=body, timeout=10)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]
    deadline = time.monotonic() + 120
    while True:
        view = requests.get(stack.url(f"/v1/jobs/{job_id}?wait=20"), timeout=30).json()
        if view["state"] not in ("QUEUED", "RUNNING") or time.monotonic() > deadline:
            assert view["state"] == "SUCCEEDED", view
            return dict(view)


def series_job() -> dict[str, object]:
    return {"model": "ct_classifier", "series_uid": DEMO_SERIES_UID}


def tensor_job() -> dict[str, object]:
    return {"model": "tiny", "inputs": [TINY_ROW]}
