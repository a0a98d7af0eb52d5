"""Several tensor jobs in one message (``run_jobs``) with the FakeRuntime and a real Redis: the
same per-job guarantees as one job per message."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis

from flaskmodel.jobs.admission import Admission, pending_key
from flaskmodel.jobs.store import JobStore
from flaskmodel.runtime.fake import FakeRuntime
from flaskmodel.runtime.repository import ModelRepository
from flaskmodel.schemas import JobRequest, JobState
from flaskmodel.settings import Settings
from flaskmodel.storage.redis import key
from flaskmodel.worker.runner import JobRunner
from tests.conftest import FAKE_SPEC, write_fake_model

Parts = tuple[JobRunner, JobStore, ModelRepository, Admission]


@pytest.fixture
def parts(
    make_settings: Callable[..., Settings], fake_models_root: Path, redis_client: redis.Redis
) -> Parts:
    settings = make_settings(models_root=fake_models_root, runtime={"backend": "fake"})
    store = JobStore(redis_client, ttl=60)
    repository = ModelRepository(fake_models_root, backend="fake")
    admission = Admission(redis_client, max_pending=100, ttl=60)
    runner = JobRunner(settings, store, repository, redis_client)
    return runner, store, repository, admission


def _submit(store: JobStore, admission: Admission, model: str, x: list[list[float]]) -> str:
    job_id, *_ = store.create(JobRequest(model=model, inputs=x), admission=admission)
    return job_id


def pending(client: redis.Redis, model: str, ids: list[str]) -> list[str]:
    """Those of ``ids`` still counted against ``model``'s bound."""
    return [i for i in ids if client.zscore(pending_key(model), i) is not None]


def test_every_job_of_a_message_gets_its_own_result(
    parts: Parts, redis_client: redis.Redis
) -> None:
    runner, store, repository, admission = parts
    inputs = [[[float(i), 1.0, 2.0, 3.0]] * (1 + i % 3) for i in range(6)]
    ids = [_submit(store, admission, "fake", x) for x in inputs]
    runner.run_many(ids)
    spec = repository.get("fake").spec
    for job_id, x in zip(ids, inputs, strict=True):
        view = store.get(job_id)
        assert view.state is JobState.SUCCEEDED, view.error
        want = FakeRuntime.expected(spec, {"x": np.array(x, np.float32)})["y"]
        np.testing.assert_allclose(view.result["predictions"], want, rtol=1e-6)  # type: ignore[index]
        assert view.progress.done == view.progress.total == len(x)
        assert view.attempts == 1 and view.version == 1
        timings = view.result["timings"]  # type: ignore[index]
        assert {"queue_wait_seconds", "inference_seconds", "total_seconds"} <= set(timings)
    assert not pending(redis_client, "fake", ids)  # every job left its model's bound


def test_a_failing_job_fails_alone(
    parts: Parts, fake_models_root: Path, redis_client: redis.Redis
) -> None:
    runner, store, _, admission = parts
    write_fake_model(fake_models_root, "flaky", 1, {**FAKE_SPEC, "fail_on": 7.0})
    good = [_submit(store, admission, "flaky", [[1.0, 2.0, 3.0, 4.0]]) for _ in range(3)]
    poisoned = _submit(store, admission, "flaky", [[7.0, 0.0, 0.0, 0.0]])  # the model fails
    malformed = _submit(store, admission, "flaky", [[1.0, 2.0]])  # wrong shape
    runner.run_many([good[0], poisoned, good[1], malformed, good[2]])
    assert [store.get(i).state for i in good] == [JobState.SUCCEEDED] * 3
    failed = store.get(poisoned).error
    assert failed is not None and failed.type == "internal_error" and "7.0" in failed.message
    assert store.get(malformed).error.type == "invalid_input"  # type: ignore[union-attr]
    assert not pending(redis_client, "flaky", [*good, poisoned, malformed])


def test_a_redelivered_message_runs_only_what_is_unfinished(
    parts: Parts, redis_client: redis.Redis
) -> None:
    runner, store, _, admission = parts
    done, cancelled, crashed, dying = (
        _submit(store, admission, "fake", [[float(i), 0.0, 0.0, 0.0]]) for i in range(4)
    )
    runner.run_many([done])
    first = store.get(done)
    store.cancel(cancelled)
    store.start(crashed)  # an earlier delivery died while running it
    for _ in range(3):  # delivered three times already, its worker died each time
        store.start(dying)
    runner.run_many([done, cancelled, crashed, dying])
    assert store.get(done) == first  # not run again
    assert store.get(cancelled).state is JobState.CANCELLED
    again = store.get(crashed)
    assert again.state is JobState.SUCCEEDED and again.attempts == 2
    lost = store.get(dying).error
    assert lost is not None and lost.type == "worker_lost" and "4 times" in lost.message
    ledger = [redis_client.hmget(key("job", i), ["completions", "result_writes"]) for i in
              (done, crashed)]  # fmt: skip
    assert ledger == [["1", "1"], ["1", "1"]]


def test_jobs_of_unknown_models_or_expired_records_do_not_stop_the_others(
    parts: Parts, redis_client: redis.Redis
) -> None:
    runner, store, _, admission = parts
    ghost = _submit(store, admission, "ghost", [[1.0, 2.0, 3.0, 4.0]])
    expired = _submit(store, admission, "fake", [[1.0, 2.0, 3.0, 4.0]])
    redis_client.delete(key("job", expired))
    fine = _submit(store, admission, "fake", [[1.0, 2.0, 3.0, 4.0]])
    runner.run_many([ghost, expired, fine])
    assert store.get(ghost).error.type == "model_not_found"  # type: ignore[union-attr]
    assert store.get(fine).state is JobState.SUCCEEDED
    assert not pending(redis_client, "fake", [fine])


def test_a_script_redis_lost_is_loaded_again(parts: Parts, redis_client: redis.Redis) -> None:
    runner, store, _, admission = parts
    ids = [_submit(store, admission, "fake", [[1.0, 2.0, 3.0, 4.0]]) for _ in range(2)]
    redis_client.script_flush()  # what a Redis restart does to the script cache
    runner.run_many(ids)
    assert [store.get(i).state for i in ids] == [JobState.SUCCEEDED] * 2
    redis_client.script_flush()
    assert store.get(_submit(store, admission, "fake", [[1.0, 2.0, 3.0, 4.0]])).state is (
        JobState.QUEUED
    )


def test_jobs_of_a_model_shutting_down_fail_and_the_message_is_done(
    parts: Parts, redis_client: redis.Redis
) -> None:
    runner, store, repository, admission = parts
    ids = [_submit(store, admission, "fake", [[1.0, 2.0, 3.0, 4.0]]) for _ in range(2)]
    repository.get("fake").close()  # what a worker's shutdown does to its models
    runner.run_many(ids)  # no exception: the task acknowledges a message whose jobs all ended
    errors = [store.get(i).error for i in ids]
    assert [e.type if e else None for e in errors] == ["service_unavailable"] * 2
    assert not pending(redis_client, "fake", ids)
