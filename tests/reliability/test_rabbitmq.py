"""RabbitMQ as the Celery broker (Redis still holds job records and results).

Runs only where a RabbitMQ server answers on ``amqp://guest:guest@127.0.0.1:5672//`` (skipped
with the reason otherwise). Through the real worker: tensor and chunked series jobs complete,
priorities order the queue (AMQP's numbers run the other way from kombu's Redis lists), and a
worker killed with ``kill -9`` mid-load loses nothing: RabbitMQ requeues its unacknowledged
message the moment the connection drops, and the replacement worker finishes every job once.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from flaskmodel.demo.build import write_demo_series
from flaskmodel.settings import Settings
from flaskmodel.storage.redis import key
from flaskmodel.web import create_app
from tests import databases, procs
from tests.conftest import FAKE_SPEC, redis_db, write_fake_model
from tests.reliability.harness import ledger

pytestmark = pytest.mark.reliability

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
IMAGE_SPEC = {
    "inputs": [{"name": "image", "dtype": "float32", "shape": [None, 32, 32, 1]}],
    "outputs": [{"name": "scores", "dtype": "float32", "shape": [None, 4]}],
}
SERIES_UID = "2.25.8201"


def rabbitmq_answers() -> str | None:
    """None when RabbitMQ accepts the guest login on loopback, else why not."""
    from kombu import Connection  # noqa: PLC0415

    connection = Connection(AMQP_URL, connect_timeout=2)
    try:
        connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:  # noqa: BLE001 - any failure means: no usable RabbitMQ here
        return f"no RabbitMQ at {AMQP_URL} ({type(exc).__name__}: {exc})"
    finally:
        connection.release()
    return None


@pytest.fixture
def rabbit(tmp_path: Path, redis_url: str) -> Iterator[tuple[Settings, redis.Redis]]:
    reason = rabbitmq_answers()
    if reason:
        pytest.skip(reason)
    models = tmp_path / "models"
    write_fake_model(models, "paced", 1, {**FAKE_SPEC, "delay_ms": 100})
    write_fake_model(models, "scan", 1, IMAGE_SPEC)
    # Holds the worker's only process while the priority test queues its jobs.
    write_fake_model(models, "blocker", 1, {**FAKE_SPEC, "delay_ms": 1500})
    for name in ("paced", "scan", "blocker"):
        (models / name / "flaskmodel.json").write_text(
            json.dumps({"max_batch_delay_ms": 0, "batch_size": 4})
        )
    write_demo_series(tmp_path / "data", n_slices=10, size=32, series_uid=SERIES_UID)
    store_url = redis_db(redis_url, databases.RABBITMQ_STORE)
    queue = f"rmq-{time.monotonic_ns()}"
    settings = Settings(
        models_root=models,
        data_root=tmp_path / "data",
        run_dir=tmp_path / "run",
        redis={"url": store_url},
        broker={"url": AMQP_URL},
        runtime={"backend": "fake"},
        worker={"heartbeat_seconds": 1.0, "queue": queue},
        series={"chunk_batches": 1},
    )
    client = redis.Redis.from_url(store_url, decode_responses=True)
    try:
        yield settings, client
    finally:
        client.close()
        _delete_queues(queue, ["paced", "scan", "blocker"])


def _delete_queues(queue: str, models: list[str]) -> None:
    """Remove the test's queues from the shared RabbitMQ."""
    from kombu import Connection  # noqa: PLC0415

    with Connection(AMQP_URL, connect_timeout=2) as connection:
        channel = connection.default_channel
        for name in [queue, *(f"{queue}.{m}" for m in models)]:
            channel.queue_delete(name)


def test_jobs_priorities_and_a_kill9_through_rabbitmq(
    rabbit: tuple[Settings, redis.Redis], tmp_path: Path
) -> None:
    settings, client = rabbit
    web = create_app(settings).test_client()

    def submit(body: dict[str, object]) -> str:
        response = web.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.get_json()
        return str(response.get_json()["job_id"])

    def states(ids: list[str]) -> list[str | None]:
        return [client.hget(key("job", i), "state") for i in ids]

    worker = procs.start_worker(settings, tmp_path / "worker-1.log")
    try:
        series = submit({"model": "scan", "series_uid": SERIES_UID})
        procs.wait_for(lambda: states([series]) == ["SUCCEEDED"], 30, "series job")
        assert client.hget(key("job", series), "chunk") == "2"  # 10 slices, batches of 4

        # One job keeps the worker busy; then low-priority jobs, then a high-priority one.
        ids = [submit({"model": "blocker", "inputs": [[0.0] * 4]})]
        procs.wait_for(lambda: states(ids[:1]) == ["RUNNING"], 10, "first job running")
        low = [submit({"model": "paced", "inputs": [[1.0] * 4], "priority": 10}) for _ in "abc"]
        high = submit({"model": "paced", "inputs": [[2.0] * 4], "priority": 1})
        every = [*ids, *low, high]
        procs.wait_for(lambda: set(states(every)) == {"SUCCEEDED"}, 30, "priority jobs")
        finished = {i: client.hget(key("job", i), "finished_at") for i in every}
        assert all(str(finished[high]) < str(finished[i]) for i in low), finished

        # kill -9 mid-load; a replacement worker finishes everything, each result written once.
        load = [submit({"model": "paced", "inputs": [[float(i)] * 4]}) for i in range(20)]

        # Killed while a job runs (between two jobs there would be nothing to redeliver). The
        # states read after the kill say which jobs the dead worker was running; a job may end
        # between the read that saw it running and the kill, so then the replacement is killed
        # too, while one of its jobs runs.
        def five_done_one_running() -> bool:
            now = states(load)
            return now.count("SUCCEEDED") >= 5 and "RUNNING" in now

        witnessed: list[str] = []
        for attempt in range(2, 5):
            procs.wait_for(five_done_one_running, 30, "5 jobs done and one running")
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
            witnessed = [i for i, s in zip(load, states(load), strict=True) if s == "RUNNING"]
            worker = procs.start_worker(settings, tmp_path / f"worker-{attempt}.log")
            if witnessed:
                break
        assert witnessed, "no kill found a job running"
        procs.wait_for(lambda: set(states(load)) == {"SUCCEEDED"}, 40, "jobs after the kill")
        summary = ledger({i: client.hgetall(key("job", i)) for i in load})
        kills = f"{attempt - 1} kill(s), {len(witnessed)} job(s) running at the last"
        print(f"\nRabbitMQ broker, kill -9 of the worker mid-load ({kills}): {summary}")
        assert summary["result_writes"] == {1: 20}
        # Each job the killed worker was running came back at once and ran again.
        assert all(int(client.hget(key("job", i), "attempts") or 0) > 1 for i in witnessed)
        # The orphan sweeper and the watchdog read kombu's Redis queues: with RabbitMQ they
        # stay off (the sweeper would find every job's message missing and publish it again).
        log = (tmp_path / f"worker-{attempt}.log").read_text()
        assert "orphan sweeper and consumer watchdog off: the broker is amqp, not Redis" in log
    finally:
        procs.stop(worker)
