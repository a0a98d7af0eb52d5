"""One Celery queue per model: a worker started with --models takes only its models' jobs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import redis

from flaskmodel.settings import Settings
from flaskmodel.storage.redis import connect
from flaskmodel.storage.workers import WorkerRegistry
from flaskmodel.web import create_app
from flaskmodel.worker.main import queues
from tests import procs
from tests.conftest import FAKE_SPEC, write_fake_model


def test_workers_serve_only_their_models(
    make_settings: Callable[..., Settings], tmp_path: Path, redis_client: redis.Redis
) -> None:
    root = tmp_path / "models"
    for name in ("alpha", "beta"):
        write_fake_model(root, name, 1, FAKE_SPEC)
    base = make_settings(
        models_root=root,
        runtime={"backend": "fake"},
        worker={"queue": f"mq-{time.monotonic_ns()}"},
    )
    queue = base.worker.queue
    assert queues(base) == [queue, f"{queue}.alpha", f"{queue}.beta"]

    def only(model: str) -> Settings:
        return base.model_copy(
            update={"worker": base.worker.model_copy(update={"models": [model]})}
        )

    assert queues(only("beta")) == [queue, f"{queue}.beta"]
    alpha = procs.start_worker(only("alpha"), tmp_path / "alpha.log")
    beta = procs.start_worker(only("beta"), tmp_path / "beta.log")
    client = create_app(base).test_client()
    registry = WorkerRegistry(connect(base), ttl=3)
    try:
        served = {
            w.pid: sorted(w.models)
            for w in registry.live()
            if w.ready and set(w.models) & {"alpha", "beta"}
        }
        assert sorted(served.values()) == [["alpha"], ["beta"]]
        ids = {}
        for model in ("alpha", "beta"):
            response = client.post("/v1/jobs", json={"model": model, "inputs": [[1, 2, 3, 4]]})
            assert response.status_code == 202, response.get_json()
            ids[model] = response.get_json()["job_id"]
        for model, job_id in ids.items():
            procs.wait_for(
                lambda job_id=job_id: (
                    client.get(f"/v1/jobs/{job_id}").get_json()["state"] == "SUCCEEDED"
                ),
                30,
                f"{model} job",
            )
        procs.stop(beta)
        procs.wait_for(
            lambda: not any("beta" in w.models for w in registry.live()), 10, "beta gone"
        )
        # Nothing serves beta now: refused at once, never a job that waits forever.
        refused = client.post("/v1/jobs", json={"model": "beta", "inputs": [[1, 2, 3, 4]]})
        assert refused.status_code in (404, 503), refused.get_json()
        assert procs.queued(redis_client, f"{queue}.beta") == 0
    finally:
        procs.stop(alpha)
        procs.stop(beta)
