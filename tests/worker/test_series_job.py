"""Series jobs in one process: batches, progress, cancel at the next batch, resume."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis

from flaskmodel.jobs.store import JobStore
from flaskmodel.runtime.repository import ModelRepository
from flaskmodel.schemas import JobRequest, JobState
from flaskmodel.settings import Settings
from flaskmodel.worker.runner import JobRunner
from tests.conftest import CHEST, SAMPLES, write_fake_model

IMAGE_SPEC = {
    "inputs": [{"name": "image", "dtype": "float32", "shape": [None, 32, 32, 1]}],
    "outputs": [{"name": "scores", "dtype": "float32", "shape": [None, 4]}],
}


@pytest.fixture
def setup(
    make_settings: Callable[..., Settings], tmp_path: Path, redis_client: redis.Redis
) -> tuple[JobRunner, JobStore, Path]:
    models = tmp_path / "models"
    write_fake_model(models, "slow", 1, {**IMAGE_SPEC, "delay_ms": 150})
    (models / "slow" / "flaskmodel.json").write_text(
        json.dumps({"batch_size": 2, "class_names": ["a", "b", "c", "d"]})
    )
    shutil.copytree(SAMPLES / CHEST, tmp_path / "data" / "chest")
    settings = make_settings(models_root=models, runtime={"backend": "fake"})
    store = JobStore(redis_client, ttl=60)
    repository = ModelRepository(models, backend="fake")
    return JobRunner(settings, store, repository, redis_client), store, tmp_path


def test_progress_moves_by_batches_and_cancel_stops_at_the_next(
    setup: tuple[JobRunner, JobStore, Path],
) -> None:
    runner, store, _ = setup
    job_id, *_ = store.create(JobRequest(model="slow", series_uid="chest"))
    seen: list[int] = []
    thread = threading.Thread(target=runner.run, args=(job_id,))
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = store.get(job_id).progress.done
        if not seen or seen[-1] != done:
            seen.append(done)
        if done >= 4:
            store.cancel(job_id)
            break
        time.sleep(0.01)
    thread.join(30)
    view = store.get(job_id)
    assert view.state is JobState.CANCELLED
    assert all(d % 2 == 0 for d in seen), seen  # batches of 2
    assert 4 <= view.progress.done <= 6 < view.progress.total == 20
    assert view.result is None


def test_redelivered_job_resumes_from_stored_batches(
    setup: tuple[JobRunner, JobStore, Path], redis_client: redis.Redis
) -> None:
    runner, store, _ = setup
    job_id, *_ = store.create(JobRequest(model="slow", series_uid="chest", slices={"stop": 6}))
    # A first attempt stored two batches (4 slices), then its worker died.
    store.start(job_id)
    from flaskmodel.dicom.series import scan_series  # noqa: PLC0415

    slices = scan_series(setup[2] / "data", "chest").slices[:4]
    marker = [0.0, 0.0, 0.0, 1.0]  # scores no fake model would produce
    redis_client.hset(
        f"flaskmodel:job:{job_id}:slices",
        mapping={s.sop_instance_uid: json.dumps(marker) for s in slices},
    )
    started = time.monotonic()
    runner.run(job_id)
    elapsed = time.monotonic() - started
    view = store.get(job_id)
    assert view.state is JobState.SUCCEEDED, view.error
    assert view.attempts == 2
    assert view.progress.done == view.progress.total == 6
    rows = view.result["slices"]  # type: ignore[index]
    assert [r["scores"] for r in rows[:4]] == [marker] * 4  # kept, not recomputed
    assert all(r["scores"] != marker for r in rows[4:])
    assert elapsed < 0.15 * 3 + 2  # one batch computed, not three
    assert not redis_client.exists(f"flaskmodel:job:{job_id}:slices")
    stored = redis_client.hgetall("flaskmodel:series:" + view.result["series_uid"] + ":slow")  # type: ignore[index]
    assert len([k for k in stored if k.startswith("slice:")]) == 6
    assert redis_client.ttl("flaskmodel:series:" + view.result["series_uid"] + ":slow") > 0  # type: ignore[index]
    assert np.isclose(sum(rows[5]["scores"]), 1.0, atol=1e-4)


def test_no_patient_identifiers_in_logs(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from flaskmodel.demo.build import write_demo_series  # noqa: PLC0415

    models = tmp_path / "models"
    write_fake_model(models, "m", 1, IMAGE_SPEC)
    folder = write_demo_series(tmp_path / "data", n_slices=6, size=32)
    settings = make_settings(models_root=models, runtime={"backend": "fake"})
    store = JobStore(redis_client, ttl=60)
    runner = JobRunner(settings, store, ModelRepository(models, backend="fake"), redis_client)
    caplog.set_level("DEBUG")
    good, *_ = store.create(JobRequest(model="m", series_uid=folder.name))
    runner.run(good)
    assert store.get(good).state is JobState.SUCCEEDED
    first = sorted(folder.iterdir())[0]
    first.write_bytes(first.read_bytes()[:-2000])  # a slice whose pixels no longer decode
    bad, *_ = store.create(JobRequest(model="m", series_uid=folder.name))
    runner.run(bad)
    assert store.get(bad).state is JobState.FAILED
    text = caplog.text + str(store.get(bad).error)
    for identifier in ("Demo^Phantom", "Phantom", "'DEMO'", "PatientID"):
        assert identifier not in text
