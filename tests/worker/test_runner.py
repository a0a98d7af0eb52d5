"""JobRunner with the FakeRuntime and a real Redis: the layers above the model."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis

from flaskmodel.jobs.store import JobStore
from flaskmodel.runtime.fake import FakeRuntime
from flaskmodel.runtime.repository import ModelRepository
from flaskmodel.schemas import JobRequest, JobState, JobWorker
from flaskmodel.settings import Settings
from flaskmodel.worker.runner import JobRunner
from tests.conftest import FAKE_SPEC, write_fake_model


@pytest.fixture
def parts(
    make_settings: Callable[..., Settings], fake_models_root: Path, redis_client: redis.Redis
) -> tuple[JobRunner, JobStore, ModelRepository]:
    settings = make_settings(models_root=fake_models_root, runtime={"backend": "fake"})
    store = JobStore(redis_client, ttl=60)
    repository = ModelRepository(fake_models_root, backend="fake")
    return JobRunner(settings, store, repository, redis_client), store, repository


def test_tensor_job_result_equals_the_model(
    parts: tuple[JobRunner, JobStore, ModelRepository],
) -> None:
    runner, store, repository = parts
    x = [[0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4]]
    job_id, *_ = store.create(JobRequest(model="fake", inputs=x))
    runner.run(job_id)
    view = store.get(job_id)
    assert view.state is JobState.SUCCEEDED, view.error
    expected = FakeRuntime.expected(repository.get("fake").spec, {"x": np.array(x, np.float32)})
    np.testing.assert_allclose(view.result["predictions"], expected["y"], rtol=1e-6)  # type: ignore[index]
    assert view.result["model_version"] == 1  # type: ignore[index]
    assert view.progress.done == view.progress.total == 2


def test_model_failure_is_recorded(
    parts: tuple[JobRunner, JobStore, ModelRepository], fake_models_root: Path
) -> None:
    runner, store, _ = parts
    write_fake_model(fake_models_root, "flaky", 1, {**FAKE_SPEC, "fail_on": 7.0})
    job_id, *_ = store.create(JobRequest(model="flaky", inputs=[[7, 0, 0, 0]]))
    runner.run(job_id)
    view = store.get(job_id)
    assert view.state is JobState.FAILED
    assert (
        view.error is not None
        and view.error.type == "internal_error"
        and "fails on 7.0" in view.error.message
    )


def test_bad_input_and_unknown_model_fail_cleanly(
    parts: tuple[JobRunner, JobStore, ModelRepository],
) -> None:
    runner, store, _ = parts
    bad, *_ = store.create(JobRequest(model="fake", inputs=[[1, 2]]))
    missing, *_ = store.create(JobRequest(model="ghost", inputs=[[1, 2, 3, 4]]))
    runner.run(bad)
    runner.run(missing)
    assert store.get(bad).error.type == "invalid_input"  # type: ignore[union-attr]
    assert store.get(missing).error.type == "model_not_found"  # type: ignore[union-attr]


def test_redelivery_is_bounded(parts: tuple[JobRunner, JobStore, ModelRepository]) -> None:
    runner, store, _ = parts
    job_id, *_ = store.create(JobRequest(model="fake", inputs=[[1, 2, 3, 4]]))
    for _ in range(3):  # three deliveries whose worker "died" before finishing
        store.start(job_id)
    runner.run(job_id)
    view = store.get(job_id)
    assert view.state is JobState.FAILED
    assert (
        view.error is not None
        and view.error.type == "worker_lost"
        and "4 times" in view.error.message
    )


def test_finished_or_cancelled_jobs_are_not_rerun(
    parts: tuple[JobRunner, JobStore, ModelRepository],
) -> None:
    runner, store, _ = parts
    job_id, *_ = store.create(JobRequest(model="fake", inputs=[[1, 2, 3, 4]]))
    runner.run(job_id)
    first = store.get(job_id)
    runner.run(job_id)  # a duplicate delivery
    assert store.get(job_id) == first


def test_a_job_records_the_worker_that_ran_it(
    parts: tuple[JobRunner, JobStore, ModelRepository],
) -> None:
    """The Celery node name as the worker expands ``worker.node_name``, the host and the pid,
    in the record and in the attempts history, for a job run alone and in a batch."""
    runner, store, _ = parts
    host = socket.gethostname()
    me = JobWorker(node=f"flaskmodel@{host}", host=host, pid=os.getpid())
    alone, *_ = store.create(JobRequest(model="fake", inputs=[[1, 2, 3, 4]]))
    together = [store.create(JobRequest(model="fake", inputs=[[1, 2, 3, i]]))[0] for i in range(2)]
    runner.run(alone)
    runner.run_many(together)
    for job_id in (alone, *together):
        view = store.get(job_id)
        assert view.state is JobState.SUCCEEDED and view.worker == me
        assert view.attempts_history is not None
        [attempt] = view.attempts_history
        assert (attempt.attempt, attempt.chunk, attempt.worker) == (1, 0, me)
        assert attempt.outcome == "SUCCEEDED" and attempt.ended_at == view.finished_at
