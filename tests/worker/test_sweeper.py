"""The orphan sweeper against a real Redis and real kombu messages (no worker runs them here).

Jobs whose message waits in the queue or sits taken-but-unacknowledged are left alone; a job with
no message anywhere is published again on the second sweep that finds it so, once; finished jobs
and jobs whose record changed between sweeps are left alone; one sweeper leads at a time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from flaskmodel.jobs.admission import Admission
from flaskmodel.jobs.broker import TASK_RUN_JOB, make_celery, model_queue, redis_queue_keys
from flaskmodel.jobs.store import JobStore
from flaskmodel.schemas import JobRequest
from flaskmodel.settings import Settings
from flaskmodel.worker.sweeper import LOCK, OrphanSweeper, message_ids
from tests import databases
from tests.conftest import redis_db

MODEL = "swept"


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(
        redis={"url": redis_db(redis_url, databases.SWEEPER)}, runtime={"backend": "fake"}
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[redis.Redis]:
    found = redis.Redis.from_url(settings.redis_url(), decode_responses=True)
    found.flushdb()
    yield found
    found.flushdb()
    found.close()


def accept(client: redis.Redis, jobs: JobStore) -> str:
    """A job recorded and admitted as the web tier does it, not yet published."""
    job_id, *_ = jobs.create(JobRequest(model=MODEL, inputs=[[1.0, 2.0, 3.0, 4.0]]))
    Admission(client, max_pending=100, ttl=3600).admit(MODEL, job_id)
    return job_id


def queued_ids(client: redis.Redis, settings: Settings) -> list[str]:
    raws = [
        raw
        for name in redis_queue_keys(model_queue(settings.worker.queue, MODEL))
        for raw in client.lrange(name, 0, -1)
    ]
    return [i for r in raws for i in message_ids(r)]


def test_sweeper_republishes_only_jobs_without_a_message(
    client: redis.Redis, settings: Settings
) -> None:
    celery = make_celery(settings)
    queue = model_queue(settings.worker.queue, MODEL)
    jobs = JobStore(client, ttl=3600)
    waiting, taken, lost, running_lost, finished, changing = (
        accept(client, jobs) for _ in range(6)
    )
    # ``taken``: a consumer takes its message without acknowledging it (kombu keeps it in
    # ``unacked``); ``waiting``'s message waits in the queue.
    celery.send_task(TASK_RUN_JOB, args=[taken], task_id=taken, queue=queue)
    with celery.connection_for_read() as conn:
        held = conn.SimpleQueue(queue, no_ack=False).get(timeout=5)
        assert held.headers["id"] == taken and client.hlen("unacked") == 1
        celery.send_task(TASK_RUN_JOB, args=[waiting], task_id=waiting, queue=queue)
        jobs.start(running_lost)  # RUNNING, its message acknowledged long ago
        jobs.succeed(finished, {"ok": True})
        sweeper = OrphanSweeper(
            client, celery, queue=settings.worker.queue, interval=1, lease=60, owner="test:1"
        )
        assert sweeper.lead()
        assert sweeper.sweep() == []  # first sighting: suspects only
        jobs.start(changing)  # its record moved meanwhile: not an orphan yet
        again = sweeper.sweep()
        assert sorted(again) == sorted([lost, running_lost])
        assert sorted(queued_ids(client, settings)) == sorted([waiting, lost, running_lost])
        assert sweeper.sweep() == [changing]  # unchanged since the last sweep now
        assert sweeper.sweep() == []  # every unfinished job has a message again
        held.ack()
    print(f"\nsweeper: republished {again} then [{changing}]; left the queued and taken jobs")


def test_one_sweeper_leads_and_another_takes_over_when_it_stops(
    client: redis.Redis, settings: Settings
) -> None:
    celery = make_celery(settings)
    first = OrphanSweeper(client, celery, queue="q", interval=0.2, lease=60, owner="a:1")
    second = OrphanSweeper(client, celery, queue="q", interval=0.2, lease=60, owner="b:2")
    assert first.lead()
    assert not second.lead()
    assert first.lead()  # keeps it
    client.delete(LOCK)  # the leader died and its lock ran out
    assert second.lead()
    assert not first.lead()


def test_a_message_unacknowledged_past_the_lease_counts_as_lost(
    client: redis.Redis, settings: Settings
) -> None:
    """kombu puts a message unacknowledged past the lease back; when that restore stalls (its
    lock left behind by an outage) the sweeper publishes the job again."""
    celery = make_celery(settings)
    queue = model_queue(settings.worker.queue, MODEL)
    jobs = JobStore(client, ttl=3600)
    stuck = accept(client, jobs)
    celery.send_task(TASK_RUN_JOB, args=[stuck], task_id=stuck, queue=queue)
    with celery.connection_for_read() as conn:
        held = conn.SimpleQueue(queue, no_ack=False).get(timeout=5)
        jobs.start(stuck)
        fresh = OrphanSweeper(
            client, celery, queue=settings.worker.queue, interval=0.1, lease=60, owner="t:1"
        )
        expired = OrphanSweeper(
            client, celery, queue=settings.worker.queue, interval=0.1, lease=0, owner="t:1"
        )
        time.sleep(0.3)  # taken longer ago than a lease of 0 plus two sweep intervals
        assert fresh.sweep() == [] and fresh.sweep() == []
        assert expired.sweep() == [] and expired.sweep() == [stuck]
        assert queued_ids(client, settings) == [stuck]
        held.ack()
