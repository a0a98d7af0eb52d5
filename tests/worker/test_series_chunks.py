"""Series jobs as chunk tasks: hand-over, duplicates, a crash mid hand-over, one result write."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from kombu.exceptions import OperationalError

from flaskmodel.demo.build import write_demo_series
from flaskmodel.jobs.store import JobStore
from flaskmodel.runtime.repository import ModelRepository
from flaskmodel.schemas import JobRequest, JobState
from flaskmodel.settings import Settings
from flaskmodel.storage.redis import key
from flaskmodel.worker.runner import JobRunner
from tests.conftest import write_fake_model

IMAGE_SPEC = {
    "inputs": [{"name": "image", "dtype": "float32", "shape": [None, 32, 32, 1]}],
    "outputs": [{"name": "scores", "dtype": "float32", "shape": [None, 4]}],
}
UID = "2.25.8101"


def test_chunks_hand_over_once_survive_duplicates_and_a_lost_publish(
    make_settings: Callable[..., Settings], tmp_path: Path, redis_client: redis.Redis
) -> None:
    models = tmp_path / "models"
    write_fake_model(models, "m", 1, IMAGE_SPEC)
    (models / "m" / "flaskmodel.json").write_text(json.dumps({"batch_size": 2}))
    write_demo_series(tmp_path / "data", n_slices=7, size=32, series_uid=UID)
    settings = make_settings(
        models_root=models, runtime={"backend": "fake"}, series={"chunk_batches": 1}
    )
    store = JobStore(redis_client, ttl=60)
    published: list[int] = []
    broker_down = False

    def requeue(job_id: str, request: JobRequest, chunk: int) -> None:
        if broker_down:
            raise OperationalError("broker unreachable")
        assert request.series_uid == UID
        published.append(chunk)

    repository = ModelRepository(models, backend="fake")
    runner = JobRunner(settings, store, repository, redis_client, requeue)
    job_id, *_ = store.create(JobRequest(model="m", series_uid=UID))
    record = key("job", job_id)

    runner.run(job_id, 0)
    assert published == [1]
    assert store.get(job_id).progress.done == 2
    assert store.get(job_id).state is JobState.RUNNING
    assert not redis_client.hexists(record, "handover")

    runner.run(job_id, 0)  # a duplicate of the chunk already handed over: skipped
    assert published == [1]
    assert store.get(job_id).progress.done == 2

    broker_down = True  # chunk 1 scores its batch, hands over, then cannot publish
    with pytest.raises(OperationalError):
        runner.run(job_id, 1)
    assert redis_client.hget(record, "chunk") == "2"
    assert redis_client.hexists(record, "handover")
    broker_down = False
    runner.run(job_id, 1)  # its redelivery publishes chunk 2 again, scoring nothing twice
    assert published == [1, 2]
    assert store.get(job_id).progress.done == 4
    assert not redis_client.hexists(record, "handover")

    while store.get(job_id).state is JobState.RUNNING:
        runner.run(job_id, published[-1])
    view = store.get(job_id)
    assert view.state is JobState.SUCCEEDED, view.error
    assert published == [1, 2, 3]  # 7 slices, batches of 2: four chunks
    assert view.progress.done == view.progress.total == 7
    assert [row["index"] for row in view.result["slices"]] == list(range(7))  # type: ignore[index]
    assert view.result["timings"]["inference_seconds"] > 0  # type: ignore[index]
    assert redis_client.hget(record, "result_writes") == "1"
    runner.run(job_id, 3)  # a late duplicate of the last chunk: the job has ended
    assert redis_client.hget(record, "result_writes") == "1"
    assert not redis_client.exists(key("job", job_id, "slices"))
