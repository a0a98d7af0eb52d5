"""``SeriesTracker`` with the real pieces around it: instances stored by the real InstanceStore,
jobs submitted to the session's real worker (the demo ``ct_classifier``), the journal on disk and
the Redis mirror. Complete series are routed, late instances re-run and supersede, restarts lose
nothing and a crash between submit and journal finds the same job."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from flaskmodel.dicom.network.store import InstanceStore, StoredInstance
from flaskmodel.gateway.tracker import SeriesTracker, run_key
from flaskmodel.jobs.broker import make_celery
from flaskmodel.jobs.store import JobStore
from flaskmodel.jobs.submit import JobSubmitter, build_submitter
from flaskmodel.schemas import JobRequest, JobState, JobView, ReceivedSeries
from flaskmodel.settings import Settings
from flaskmodel.storage.received_series import ReceivedSeriesStore
from flaskmodel.storage.redis import connect
from tests.conftest import CHEST, SAMPLES, Stack

FILES = sorted((SAMPLES / CHEST).glob("*.dcm"))
CHEST_UID = "1.3.6.1.4.1.14519.5.2.1.6655.2359.207154000096236603057216610983"
ROUTE = {"model": "ct_classifier", "modality": "^CT$", "body_part": "chest|lung"}


@pytest.fixture
def settings(stack: Stack, tmp_path: Path) -> Iterator[Settings]:
    """The session stack's settings with a routing rule; the series folder is removed after."""
    dicom = stack.settings.dicom.model_copy(update={"stable_seconds": 0.5})
    dicom = dicom.model_validate({**dicom.model_dump(), "routes": [ROUTE]})
    yield stack.settings.model_copy(update={"dicom": dicom})
    shutil.rmtree(stack.settings.data_root / CHEST_UID, ignore_errors=True)
    shutil.rmtree(stack.settings.data_root / ".gateway", ignore_errors=True)
    shutil.rmtree(stack.settings.data_root / ".incoming", ignore_errors=True)


@pytest.fixture
def client(settings: Settings) -> Iterator[redis.Redis]:
    connection = connect(settings)
    yield connection
    connection.close()


@pytest.fixture
def submitter(settings: Settings, client: redis.Redis) -> JobSubmitter:
    return build_submitter(settings, client, make_celery(settings))


def tracker_of(settings: Settings, submitter: JobSubmitter, client: redis.Redis) -> SeriesTracker:
    mirror = ReceivedSeriesStore(client, ttl=600)
    return SeriesTracker(settings, submitter, mirror)


def receive(settings: Settings, tracker: SeriesTracker | None, files: list[Path]) -> None:
    store = InstanceStore(settings.data_root)
    for path in files:
        stored: StoredInstance = store.store_bytes(path.read_bytes(), source="MODALITY")
        if tracker is not None:
            tracker.on_stored(stored)


def settle(tracker: SeriesTracker, state: str, timeout: float = 15) -> ReceivedSeries:
    """Tick the tracker until the chest series reaches ``state``."""
    deadline = time.monotonic() + timeout
    while True:
        tracker.tick()
        record = tracker.records().get(CHEST_UID)
        if record is not None and record.state == state:
            return record
        assert time.monotonic() < deadline, f"series never {state}: {record}"
        time.sleep(0.1)


def finished(jobs: JobStore, job_id: str, timeout: float = 120) -> JobView:
    deadline = time.monotonic() + timeout
    while (view := jobs.get(job_id)).state in (JobState.QUEUED, JobState.RUNNING):
        assert time.monotonic() < deadline, f"job {job_id} still {view.state}"
        time.sleep(0.2)
    return view


def labels(view: JobView) -> list[Any]:
    assert view.result is not None, view.error
    return [row["sop_instance_uid"] for row in view.result["slices"]]


def test_a_stable_series_runs_and_a_late_instance_reruns_and_supersedes(
    settings: Settings, submitter: JobSubmitter, client: redis.Redis
) -> None:
    jobs = JobStore(client, ttl=600)
    tracker = tracker_of(settings, submitter, client)
    receive(settings, tracker, FILES[:-1])
    assert tracker.records()[CHEST_UID].state == "RECEIVING"

    first = settle(tracker, "ROUTED")

    assert (first.received, first.model, first.modality) == (19, "ct_classifier", "CT")
    assert first.body_part_examined == "CHEST"
    view = finished(jobs, str(first.job_id))
    assert view.state is JobState.SUCCEEDED and len(labels(view)) == 19
    mirrored = ReceivedSeriesStore(client, ttl=600).get(CHEST_UID)
    assert (mirrored.state, mirrored.job_id, mirrored.received) == ("ROUTED", first.job_id, 19)

    receive(settings, tracker, FILES[-1:])  # a late instance
    assert tracker.records()[CHEST_UID].state == "RECEIVING"
    second = settle(tracker, "ROUTED")

    assert second.job_id != first.job_id and second.received == 20
    assert [run.superseded_by for run in second.jobs] == [second.job_id, None]
    rerun = finished(jobs, str(second.job_id))
    assert rerun.state is JobState.SUCCEEDED and len(labels(rerun)) == 20


def test_a_restart_reads_the_journal_and_the_files(
    settings: Settings, submitter: JobSubmitter, client: redis.Redis
) -> None:
    first = tracker_of(settings, submitter, client)
    receive(settings, first, FILES[:5])
    # The process dies before the series is stable; another starts.
    second = tracker_of(settings, submitter, client)
    assert second.load() == 1
    routed = settle(second, "ROUTED")
    assert routed.received == 5 and len(routed.jobs) == 1
    # An instance stored just before a crash, its tracker never told: the files say so.
    receive(settings, None, FILES[5:8])
    third = tracker_of(settings, submitter, client)
    third.load()
    assert third.records()[CHEST_UID].state == "RECEIVING"
    rerun = settle(third, "ROUTED")
    assert rerun.received == 8 and len(rerun.jobs) == 2


def test_a_submit_before_a_crash_is_found_again_not_repeated(
    settings: Settings, submitter: JobSubmitter, client: redis.Redis
) -> None:
    tracker = tracker_of(settings, submitter, client)
    receive(settings, tracker, FILES[:3])
    # What the tracker's first submit would send, already sent by a process that then died.
    earlier, created = submitter.submit(
        JobRequest(model="ct_classifier", series_uid=CHEST_UID),
        idempotency_key=run_key(tracker.records()[CHEST_UID]),
    )
    assert created
    routed = settle(tracker, "ROUTED")
    assert routed.job_id == earlier


def test_unmatched_series_are_stored_and_unknown_models_are_an_error(
    settings: Settings, submitter: JobSubmitter, client: redis.Redis
) -> None:
    mri_only = settings.dicom.model_validate(
        {**settings.dicom.model_dump(), "routes": [{"model": "ct_classifier", "modality": "MR"}]}
    )
    tracker = tracker_of(settings.model_copy(update={"dicom": mri_only}), submitter, client)
    receive(settings, tracker, FILES[:2])
    assert settle(tracker, "STORED").job_id is None

    missing = settings.dicom.model_validate(
        {**settings.dicom.model_dump(), "routes": [{"model": "no_such_model"}]}
    )
    shutil.rmtree(settings.data_root / CHEST_UID)
    shutil.rmtree(settings.data_root / ".gateway")
    tracker = tracker_of(settings.model_copy(update={"dicom": missing}), submitter, client)
    receive(settings, tracker, FILES[:2])
    failed = settle(tracker, "ERROR")
    assert failed.error is not None and "no_such_model" in failed.error
