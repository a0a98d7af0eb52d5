"""Cancelling: queued work never runs, even when a worker picks up its message later."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import redis

from flaskmodel.settings import Settings
from flaskmodel.web import create_app
from tests import procs


def test_cancelled_job_never_runs(
    make_settings: Callable[..., Settings],
    fake_models_root: Path,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    queue = f"cancel-{time.monotonic_ns()}"
    settings = make_settings(
        models_root=fake_models_root, runtime={"backend": "fake"}, worker={"queue": queue}
    )
    # A worker on another queue advertises the model; nothing consumes ``queue`` yet, so the
    # jobs wait there while one of them is cancelled.
    elsewhere = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"queue": queue + "-other"})}
    )
    bystander = procs.start_worker(elsewhere, tmp_path / "bystander.log")
    client = create_app(settings).test_client()
    ids = []
    for value in (1.0, 2.0):
        response = client.post("/v1/jobs", json={"model": "fake", "inputs": [[value] * 4]})
        assert response.status_code == 202, response.get_json()
        ids.append(response.get_json()["job_id"])
    assert procs.queued(redis_client, f"{queue}.fake") == 2
    cancelled = client.delete(f"/v1/jobs/{ids[0]}")
    assert cancelled.status_code == 200
    assert cancelled.get_json()["state"] == "CANCELLED"

    worker = procs.start_worker(settings, tmp_path / "worker2.log")
    try:
        procs.wait_for(
            lambda: client.get(f"/v1/jobs/{ids[1]}").get_json()["state"] == "SUCCEEDED",
            30,
            "second job",
        )
        procs.wait_for(
            lambda: procs.queued(redis_client, f"{queue}.fake") == 0, 10, "queue drained"
        )
    finally:
        procs.stop(worker)
        procs.stop(bystander)
    first = client.get(f"/v1/jobs/{ids[0]}").get_json()
    assert first["state"] == "CANCELLED"
    assert first["attempts"] == 0
    assert "started_at" not in first and "result" not in first
    assert client.delete(f"/v1/jobs/{ids[0]}").status_code == 409
