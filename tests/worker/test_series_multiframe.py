"""Series jobs over a multi-frame CT file: one result per frame, keyed by SOPInstanceUID + frame,
the same scores as the single-frame series it was made from."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from pydicom.uid import JPEG2000Lossless

from flaskmodel.jobs.store import JobStore
from flaskmodel.runtime.repository import ModelRepository
from flaskmodel.schemas import JobRequest, JobState
from flaskmodel.settings import Settings
from flaskmodel.worker.runner import JobRunner
from tests.conftest import CHEST, SAMPLES, write_fake_model
from tests.dicom.conftest import write_legacy_enhanced

IMAGE_SPEC = {
    "inputs": [{"name": "image", "dtype": "float32", "shape": [None, 32, 32, 1]}],
    "outputs": [{"name": "scores", "dtype": "float32", "shape": [None, 3]}],
}


@pytest.fixture
def setup(
    make_settings: Callable[..., Settings], tmp_path: Path, redis_client: redis.Redis
) -> tuple[JobRunner, JobStore, str]:
    models = tmp_path / "models"
    write_fake_model(models, "m", 1, IMAGE_SPEC)
    (models / "m" / "flaskmodel.json").write_text(json.dumps({"batch_size": 4}))
    data = tmp_path / "data"
    shutil.copytree(SAMPLES / CHEST, data / "chest")
    # The same slices as one JPEG 2000 Legacy Converted Enhanced CT, in an export folder.
    image = write_legacy_enhanced(
        sorted((SAMPLES / CHEST).glob("*.dcm")),
        data / "chest-mf" / "DICOM" / "volume.dcm",
        transfer_syntax=JPEG2000Lossless,
    )
    (data / "chest-mf" / "DICOM" / "DIRFILE").write_bytes(b"\x01\x00PHILIPS" + bytes(100))
    settings = make_settings(models_root=models, runtime={"backend": "fake"})
    store = JobStore(redis_client, ttl=60)
    runner = JobRunner(settings, store, ModelRepository(models, backend="fake"), redis_client)
    return runner, store, str(image.SOPInstanceUID)


def run_job(runner: JobRunner, store: JobStore, series: str) -> dict[str, Any]:
    job_id, *_ = store.create(JobRequest(model="m", series_uid=series))
    runner.run(job_id)
    view = store.get(job_id)
    assert view.state is JobState.SUCCEEDED, view.error
    assert view.progress.done == view.progress.total == 20
    assert view.result is not None
    return view.result


def test_each_frame_is_a_slice_with_its_own_result(
    setup: tuple[JobRunner, JobStore, str], redis_client: redis.Redis
) -> None:
    runner, store, sop_uid = setup
    singles = run_job(runner, store, "chest")

    result = run_job(runner, store, "chest-mf")

    rows = result["slices"]
    assert [r["frame_number"] for r in rows] == list(range(20, 0, -1))  # frame 1 is the top
    assert {r["sop_instance_uid"] for r in rows} == {sop_uid}
    assert all(r["frame_number"] is None for r in singles["slices"])
    # Frame by frame the same HU as the single files, so the same model scores.
    for row, single in zip(rows, singles["slices"], strict=True):
        assert (row["index"], row["z"]) == (single["index"], single["z"])
        assert row["scores"] == single["scores"]
    skipped = "skipped 1 non-DICOM file(s), e.g. chest-mf/DICOM/DIRFILE"
    assert result["series"]["warnings"] == [skipped]

    stored = redis_client.hgetall(f"flaskmodel:series:{result['series_uid']}:m")
    fields = sorted(k for k in stored if k.startswith("slice:"))
    assert fields == sorted(f"slice:{sop_uid}:{n}" for n in range(1, 21))
    entry = json.loads(stored[f"slice:{sop_uid}:20"])
    assert (entry["index"], entry["frame_number"], entry["sop_instance_uid"]) == (0, 20, sop_uid)


def test_a_redelivered_job_keeps_the_frames_already_scored(
    setup: tuple[JobRunner, JobStore, str], redis_client: redis.Redis
) -> None:
    runner, store, sop_uid = setup
    job_id, *_ = store.create(JobRequest(model="m", series_uid="chest-mf"))
    store.start(job_id)
    marker = [0.0, 0.0, 1.0]  # scores no fake model would produce
    # A first attempt scored the four lowest slices (frames 20..17), then its worker died.
    redis_client.hset(
        f"flaskmodel:job:{job_id}:slices",
        mapping={f"{sop_uid}:{n}": json.dumps(marker) for n in (20, 19, 18, 17)},
    )

    runner.run(job_id)

    view = store.get(job_id)
    assert view.state is JobState.SUCCEEDED, view.error
    assert view.progress.done == view.progress.total == 20
    rows = view.result["slices"]  # type: ignore[index]
    assert [r["scores"] for r in rows[:4]] == [marker] * 4
    assert all(r["scores"] != marker for r in rows[4:])
