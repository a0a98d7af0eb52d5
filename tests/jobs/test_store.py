"""JobStore against a real Redis: creation, idempotency, transitions, TTLs."""

from __future__ import annotations

import pytest
import redis

from flaskmodel.errors import Conflict, JobNotFound
from flaskmodel.jobs.store import JobStore
from flaskmodel.schemas import JobRequest, JobState


@pytest.fixture
def store(redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client, ttl=300)


def request(value: float = 1.0) -> JobRequest:
    return JobRequest(model="m", inputs=[[value]])


def test_create_writes_a_queued_record_with_ttl(store: JobStore, redis_client: redis.Redis) -> None:
    job_id, created, _ = store.create(request())
    assert created
    view = store.get(job_id)
    assert view.state is JobState.QUEUED and view.kind == "tensor" and view.model == "m"
    assert 0 < redis_client.ttl(f"flaskmodel:job:{job_id}") <= 300
    assert store.request(job_id) == request()


def test_idempotency(store: JobStore, redis_client: redis.Redis) -> None:
    first, created, _ = store.create(request(), idempotency_key="k-1")
    again, created_again, _ = store.create(request(), idempotency_key="k-1")
    assert created and not created_again and first == again
    with pytest.raises(Conflict):
        store.create(request(2.0), idempotency_key="k-1")
    store.delete(first)  # e.g. its publish failed: the key no longer holds a job
    third, created_third, _ = store.create(request(), idempotency_key="k-1")
    assert created_third and third != first
    assert all(redis_client.ttl(k) > 0 for k in redis_client.keys("flaskmodel:idem:*"))


def test_lifecycle_and_result(store: JobStore, redis_client: redis.Redis) -> None:
    job_id, *_ = store.create(request())
    assert store.start(job_id) == (JobState.QUEUED, 1)
    assert store.start(job_id) == (JobState.RUNNING, 2)  # a redelivery counts
    store.set_progress(job_id, 1, 2)
    assert store.succeed(job_id, {"predictions": [[1.0]]})
    view = store.get(job_id)
    assert view.state is JobState.SUCCEEDED and view.result == {"predictions": [[1.0]]}
    assert view.started_at and view.finished_at and view.attempts == 2
    assert 0 < redis_client.ttl(f"flaskmodel:result:{job_id}") <= 300
    assert not store.fail(job_id, "x", "late failure must not overwrite success")
    assert store.get(job_id).state is JobState.SUCCEEDED


def test_cancel(store: JobStore) -> None:
    job_id, *_ = store.create(request())
    assert store.cancel(job_id).state is JobState.CANCELLED
    assert store.start(job_id) == (JobState.CANCELLED, 0)
    assert not store.succeed(job_id, {"x": 1})
    with pytest.raises(Conflict):
        store.cancel(job_id)
    with pytest.raises(JobNotFound):
        store.cancel("missing")


def test_unknown_job(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        store.get("missing")
    assert store.start("missing") == (None, 0)
    assert store.state("missing") is None
