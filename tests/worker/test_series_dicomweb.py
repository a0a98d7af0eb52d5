"""Series jobs against a real PACS (Orthanc): the series pulled by WADO-RS into an empty data root,
the result sent back as DICOM SR by C-STORE and STOW-RS, each export's state in the job, a
failing destination retried then FAILED, and a redelivery resuming only what is pending."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
import redis

from flaskmodel.dicom.network.sr import report_uids
from flaskmodel.jobs.store import JobStore
from flaskmodel.runtime.repository import ModelRepository
from flaskmodel.schemas import ExportState, JobRequest, JobState
from flaskmodel.settings import Settings
from flaskmodel.worker.runner import JobRunner
from tests import procs
from tests.conftest import CHEST, SAMPLES, write_fake_model
from tests.orthanc import Orthanc

IMAGE_SPEC = {
    "inputs": [{"name": "image", "dtype": "float32", "shape": [None, 32, 32, 1]}],
    "outputs": [{"name": "scores", "dtype": "float32", "shape": [None, 3]}],
}
FILES = sorted((SAMPLES / CHEST).glob("*.dcm"))

# pynetdicom 3.0 drops the socket of a refused connection without closing it (a ResourceWarning
# when the object is collected; the descriptor is freed with it).
REFUSED_SOCKET = [
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
    pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket"),
]


@pytest.fixture(scope="module")
def in_pacs(orthanc: Orthanc) -> tuple[str, str]:
    """The 20-slice chest series stored in the PACS: (study uid, series uid)."""
    for path in FILES:
        orthanc.upload(path)
    first = pydicom.dcmread(FILES[0], stop_before_pixels=True)
    return str(first.StudyInstanceUID), str(first.SeriesInstanceUID)


def destinations(orthanc: Orthanc) -> dict[str, Any]:
    user, password = orthanc.auth
    return {
        "pacs-dimse": {
            "kind": "dimse",
            "host": "127.0.0.1",
            "port": orthanc.dicom_port,
            "ae_title": orthanc.aet,
        },
        "pacs-web": {
            "kind": "dicomweb",
            "url": orthanc.dicomweb_url,
            "username": user,
            "password": password,
        },
        "nowhere": {
            "kind": "dimse",
            "host": "127.0.0.1",
            "port": procs.free_port(),
            "ae_title": "X",
        },
    }


@pytest.fixture
def setup(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    orthanc: Orthanc,
    redis_client: redis.Redis,
) -> tuple[JobRunner, JobStore, Settings]:
    models = tmp_path / "models"
    write_fake_model(models, "m", 1, IMAGE_SPEC)
    (models / "m" / "flaskmodel.json").write_text(
        json.dumps({"batch_size": 8, "class_names": ["chest", "abdomen", "pelvis"]})
    )
    user, password = orthanc.auth
    settings = make_settings(
        models_root=models,
        runtime={"backend": "fake"},
        dicom={
            "sources": {
                "pacs": {"url": orthanc.dicomweb_url, "username": user, "password": password}
            },
            "destinations": destinations(orthanc),
            "export_attempts": 3,
            "export_backoff_seconds": 0.05,
        },
    )
    store = JobStore(redis_client, ttl=600)
    runner = JobRunner(settings, store, ModelRepository(models, backend="fake"), redis_client)
    return runner, store, settings


def reports_in_pacs(orthanc: Orthanc, job_id: str) -> list[pydicom.Dataset]:
    _, sop_uid = report_uids(job_id)
    return [pydicom.dcmread(io.BytesIO(orthanc.file(i))) for i in orthanc.instance_ids(sop_uid)]


def slice_groups(report: pydicom.Dataset) -> int:
    """Measurement groups (one per slice) in the report's content tree."""
    count = 0
    stack = list(report.ContentSequence)
    while stack:
        item = stack.pop()
        name = item.get("ConceptNameCodeSequence")
        if name and name[0].CodeMeaning == "Measurement Group":
            count += 1
        stack.extend(item.get("ContentSequence", []))
    return count


def test_pulled_from_the_pacs_and_the_sr_sent_back_both_ways(
    setup: tuple[JobRunner, JobStore, Settings], in_pacs: tuple[str, str], orthanc: Orthanc
) -> None:
    runner, store, settings = setup
    study_uid, series_uid = in_pacs
    assert not settings.data_root.exists() or not any(settings.data_root.iterdir())
    request = JobRequest(
        model="m",
        series_uid=series_uid,
        source="pacs",
        study_uid=study_uid,
        exports=["pacs-dimse", "pacs-web"],
    )
    job_id, *_ = store.create(request)
    # From submit on, the job shows every export it will make.
    assert [(e.destination, e.state) for e in store.exports(job_id)] == [
        ("pacs-dimse", "PENDING"),
        ("pacs-web", "PENDING"),
    ]

    runner.run(job_id)

    view = store.get(job_id)
    assert view.state is JobState.SUCCEEDED, view.error
    assert view.progress.done == view.progress.total == len(FILES)
    # The worker's data root held nothing but the cache it pulled into.
    assert sorted(p.name for p in settings.data_root.iterdir()) == [".pacs"]
    assert [(e.destination, e.state, e.attempts) for e in view.exports or []] == [
        ("pacs-dimse", "SENT", 1),
        ("pacs-web", "SENT", 1),
    ]
    reports = reports_in_pacs(orthanc, job_id)
    assert len(reports) == 1  # sent twice, one instance: the same SOPInstanceUID
    report = reports[0]
    assert report.StudyInstanceUID == study_uid
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == series_uid
    assert slice_groups(report) == len(FILES)


@REFUSED_SOCKET[0]
@REFUSED_SOCKET[1]
def test_a_failing_destination_is_retried_then_failed_and_the_others_still_go(
    setup: tuple[JobRunner, JobStore, Settings], in_pacs: tuple[str, str]
) -> None:
    runner, store, _ = setup
    study_uid, series_uid = in_pacs
    request = JobRequest(
        model="m",
        series_uid=series_uid,
        source="pacs",
        study_uid=study_uid,
        exports=["nowhere", "pacs-web"],
    )
    job_id, *_ = store.create(request)

    runner.run(job_id)

    view = store.get(job_id)
    assert view.state is JobState.SUCCEEDED
    failed, sent = view.exports or []
    assert (failed.destination, failed.state, failed.attempts) == ("nowhere", "FAILED", 3)
    assert failed.error and failed.error.startswith("remote_unavailable")
    assert (sent.destination, sent.state) == ("pacs-web", "SENT")


@REFUSED_SOCKET[0]
@REFUSED_SOCKET[1]
def test_a_redelivery_resumes_pending_exports_only(
    setup: tuple[JobRunner, JobStore, Settings],
    in_pacs: tuple[str, str],
    orthanc: Orthanc,
    redis_client: redis.Redis,
) -> None:
    runner, store, _ = setup
    study_uid, series_uid = in_pacs
    request = JobRequest(
        model="m",
        series_uid=series_uid,
        source="pacs",
        study_uid=study_uid,
        exports=["pacs-dimse", "nowhere"],
    )
    job_id, *_ = store.create(request)
    runner.run(job_id)
    sent, failed = store.exports(job_id)
    assert (sent.state, failed.state) == ("SENT", "FAILED")
    # The worker died right after a send, before recording it: the export is still PENDING.
    store.set_export(job_id, ExportState(destination="pacs-dimse", attempts=1))

    runner.run(job_id)  # the message comes back: the job has ended, its exports have not

    resumed, still_failed = store.exports(job_id)
    assert (resumed.state, resumed.attempts) == ("SENT", 2)
    assert (still_failed.state, still_failed.attempts) == ("FAILED", 3)  # not tried again
    assert len(reports_in_pacs(orthanc, job_id)) == 1
    assert store.get(job_id).state is JobState.SUCCEEDED
