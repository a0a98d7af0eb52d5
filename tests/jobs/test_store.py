"""JobStore against a real Redis: creation, idempotency, transitions, TTLs, deliveries."""

from __future__ import annotations

import pytest
import redis

from flaskmodel.errors import Conflict, JobNotFound
from flaskmodel.jobs.scripts import HISTORY_KEEP
from flaskmodel.jobs.store import JobStore, this_process
from flaskmodel.schemas import JobRequest, JobState, JobWorker


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


def test_deliveries_are_recorded_with_their_worker(store: JobStore) -> None:
    """Each start records its worker (node, host, pid) and appends to the attempts history; a
    delivery that never recorded an end is closed ``redelivered`` by the next, a hand-over and
    a terminal move close the current one."""
    first = JobWorker(node="a@host1", host="host1", pid=11)
    second = JobWorker(node="b@host2", host="host2", pid=22)
    job_id, *_ = store.create(JobRequest(model="m", series_uid="1.2.3"))
    queued = store.get(job_id)
    assert queued.worker is None and queued.attempts_history is None
    assert store.start_chunk(job_id, 0, first) == ("run", JobState.QUEUED, 1)
    assert store.start_chunk(job_id, 0, second) == ("run", JobState.RUNNING, 2)  # first died
    assert store.advance(job_id, 0)
    assert store.start_chunk(job_id, 1, first) == ("run", JobState.RUNNING, 1)
    assert store.start_chunk(job_id, 0, first)[0] == "republish"  # not a delivery: not recorded
    assert store.succeed(job_id, {"ok": True})
    view = store.get(job_id)
    assert view.worker == first
    history = view.attempts_history
    assert history is not None
    assert [(a.attempt, a.chunk, a.worker, a.outcome) for a in history] == [
        (1, 0, first, "redelivered"),
        (2, 0, second, "handed_over"),
        (1, 1, first, "SUCCEEDED"),
    ]
    assert history[0].ended_at is None  # when a lost delivery stopped is unknown
    assert history[1].ended_at and history[1].ended_at >= history[1].started_at
    assert history[2].ended_at == view.finished_at
    dumped = view.model_dump(mode="json", exclude_none=True)
    assert dumped["worker"] == {"node": "a@host1", "host": "host1", "pid": 11}
    assert dumped["attempts_history"][0] == {
        "attempt": 1,
        "chunk": 0,
        "worker": {"node": "a@host1", "host": "host1", "pid": 11},
        "started_at": history[0].started_at,
        "outcome": "redelivered",
    }


def test_the_attempts_history_is_bounded(store: JobStore) -> None:
    job_id, *_ = store.create(request())
    for pid in range(HISTORY_KEEP + 5):
        store.start_chunk(job_id, 0, JobWorker(node="n@h", host="h", pid=pid))
    assert store.cancel(job_id).state is JobState.CANCELLED
    history = store.get(job_id).attempts_history
    assert history is not None and len(history) == HISTORY_KEEP
    assert [a.attempt for a in history] == list(range(6, HISTORY_KEEP + 6))  # the newest
    assert history[-1].outcome == "CANCELLED" and history[-2].outcome == "redelivered"


def test_a_default_delivery_names_this_process(store: JobStore) -> None:
    job_id, *_ = store.create(request())
    store.start(job_id)
    assert store.get(job_id).worker == this_process()
