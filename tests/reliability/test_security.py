"""Security: the workers accept JSON messages only. A pickled task published by hand to the
queue (what anyone with Redis access could do) is refused unopened, and the worker keeps
consuming.
"""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import pytest
import requests
from kombu import Connection, Exchange, Producer, Queue

from flaskmodel.jobs.broker import TASK_RUN_JOB, broker_url
from tests.conftest import Stack
from tests.web.test_jobs_e2e import wait_job

pytestmark = pytest.mark.reliability


class Exploit:
    """Unpickling this runs code: it creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.path}",))


def test_pickled_task_is_refused_and_the_worker_keeps_consuming(
    fake_stack: Stack, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    body = pickle.dumps(((Exploit(marker),), {}, {}))
    queue_name = fake_stack.settings.worker.queue
    with Connection(broker_url(fake_stack.settings)) as connection:
        queue = Queue(queue_name, Exchange(queue_name), routing_key=queue_name)
        producer = Producer(connection.channel())
        producer.publish(
            body,
            exchange=queue.exchange,
            routing_key=queue_name,
            declare=[queue],
            serializer=None,
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers={"task": TASK_RUN_JOB, "id": "pickled-exploit", "lang": "py"},
        )
    response = requests.post(
        fake_stack.url("/v1/jobs"), json={"model": "fake", "inputs": [[1, 2, 3, 4]]}, timeout=10
    )
    assert response.status_code == 202, response.text
    canary = wait_job(fake_stack, response.json()["job_id"], timeout=30)  # type: ignore[arg-type]
    time.sleep(0.5)
    log = (fake_stack.logs / "worker.log").read_text()
    refused = "pickle" in log and ("ContentDisallowed" in log or "Refusing" in log)
    print(
        f"\npickled task: code ran {marker.exists()}, refused in worker log {refused}, "
        f"canary after it {canary['state']}"
    )
    assert not marker.exists(), "the worker unpickled a message"
    assert refused
    assert canary["state"] == "SUCCEEDED"
