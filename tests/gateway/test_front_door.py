"""The DICOM front door end to end, with real peers: dcmtk's ``storescu`` as the modality, Orthanc
as the hospital PACS, and FlaskModel as users start it (``flaskmodel dicom``, ``flaskmodel
worker``, ``flaskmodel serve``) with the shipped defaults (``dicom.stable_seconds`` 10 s).

(a) storescu sends a real JPEG 2000 series → the routing rule starts a job → its DICOM SR arrives
in Orthanc, in the source study, one label per slice; (b) a series stored only in Orthanc is
classified by a job naming the DICOMweb source, on a worker whose data root holds no copy;
(c) a series uploaded by STOW-RS is stored and routed like one sent by C-STORE.
"""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from flaskmodel.dicom.network.sr import report_uids
from flaskmodel.settings import Settings
from tests import databases, procs
from tests.conftest import CHEST, SAMPLES, redis_db
from tests.orthanc import Orthanc

GE = SAMPLES / "dcm_qa_ct-GE-head-tilt-original"
B70F = SAMPLES / "tcia-lung-pet-ct-dx-A0002-chest-B70f-original"
CHEST_FILES = sorted((SAMPLES / CHEST).glob("*.dcm"))


class FrontDoor:
    def __init__(self, settings: Settings, base_url: str) -> None:
        self.settings = settings
        self.base_url = base_url

    def get(self, path: str) -> requests.Response:
        return requests.get(self.base_url + path, timeout=30)

    def series(self, uid: str, state: str, timeout: float = 90) -> dict[str, Any]:
        """``GET /v1/series/<uid>`` once the series is in ``state`` with its job ended."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.get(f"/v1/series/{uid}")
            body: dict[str, Any] = answer.json() if answer.status_code == 200 else {}
            job = body.get("job") or {}
            if body.get("state") == state and job.get("state") not in ("QUEUED", "RUNNING"):
                return body
            assert time.monotonic() < deadline, f"series {uid}: {answer.status_code} {body}"
            time.sleep(0.5)

    def job(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body: dict[str, Any] = self.get(f"/v1/jobs/{job_id}").json()
            exports = body.get("exports") or []
            pending = any(e["state"] == "PENDING" for e in exports)
            if body["state"] not in ("QUEUED", "RUNNING") and not pending:
                return body
            assert time.monotonic() < deadline, f"job {job_id}: {body}"
            time.sleep(0.5)


@pytest.fixture(scope="module")
def front_door(
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    models_root: Path,
    orthanc: Orthanc,
) -> Iterator[FrontDoor]:
    logs = tmp_path_factory.mktemp("front-door")
    user, password = orthanc.auth
    settings = Settings(
        models_root=models_root,
        data_root=logs / "data",
        run_dir=logs,
        redis={"url": redis_db(redis_url, databases.FRONT_DOOR)},
        worker={"heartbeat_seconds": 1.0},
        dicom={
            "port": procs.free_port(),
            "http_port": procs.free_port(),
            "routes": [{"model": "ct_classifier", "exports": ["pacs"]}],
            "destinations": {
                "pacs": {
                    "kind": "dimse",
                    "host": "127.0.0.1",
                    "port": orthanc.dicom_port,
                    "ae_title": orthanc.aet,
                }
            },
            "sources": {
                "pacs": {"url": orthanc.dicomweb_url, "username": user, "password": password}
            },
        },
    )
    assert settings.dicom.stable_seconds == 10  # the shipped default
    worker = procs.start_worker(settings, logs / "worker.log")
    try:
        port = procs.free_port()
        web = procs.start_gunicorn(settings, logs / "gunicorn.log", port)
        try:
            dicom = procs.start_dicom(settings, logs / "dicom.log")
            try:
                yield FrontDoor(settings, f"http://127.0.0.1:{port}")
            finally:
                procs.stop(dicom)
        finally:
            procs.stop(web)
    finally:
        procs.stop(worker)


def sr_in_orthanc(orthanc: Orthanc, job_id: str) -> pydicom.Dataset:
    _, sop_uid = report_uids(job_id)
    ids = orthanc.instance_ids(sop_uid)
    assert len(ids) == 1, f"SR of job {job_id} in Orthanc: {ids}"
    return pydicom.dcmread(io.BytesIO(orthanc.file(ids[0])))


def measurement_groups(report: pydicom.Dataset) -> int:
    count, stack = 0, list(report.ContentSequence)
    while stack:
        item = stack.pop()
        name = item.get("ConceptNameCodeSequence")
        count += bool(name) and name[0].CodeMeaning == "Measurement Group"
        stack.extend(item.get("ContentSequence", []))
    return count


def test_storescu_series_runs_by_rule_and_its_sr_lands_in_the_pacs(
    front_door: FrontDoor, orthanc: Orthanc
) -> None:
    dicom = front_door.settings.dicom
    sent = subprocess.run(
        [
            *("storescu", "-aec", dicom.ae_title, "-aet", "CT_SCANNER", "-xv"),
            *("127.0.0.1", str(dicom.port), *map(str, CHEST_FILES)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert sent.returncode == 0, sent.stderr
    first = pydicom.dcmread(CHEST_FILES[0], stop_before_pixels=True)
    uid = str(first.SeriesInstanceUID)
    # Within a tick of the tracker (0.5 s) the series shows, still within its 10 s of quiet.
    receiving = front_door.series(uid, "RECEIVING", timeout=5)
    assert receiving["calling_ae_title"] == "CT_SCANNER" and receiving["job_id"] is None

    series = front_door.series(uid, "ROUTED")

    assert (series["received"], series["model"]) == (len(CHEST_FILES), "ct_classifier")
    job = front_door.job(series["job_id"])
    assert job["state"] == "SUCCEEDED", job
    assert len(job["result"]["slices"]) == len(CHEST_FILES)
    assert [(e["destination"], e["state"]) for e in job["exports"]] == [("pacs", "SENT")]
    report = sr_in_orthanc(orthanc, series["job_id"])
    assert report.StudyInstanceUID == first.StudyInstanceUID
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == uid
    assert len(evidence.ReferencedSOPSequence) == len(CHEST_FILES)
    assert measurement_groups(report) == len(CHEST_FILES)  # one label per slice


def test_a_series_in_the_pacs_is_classified_without_a_local_copy(
    front_door: FrontDoor, orthanc: Orthanc
) -> None:
    files = sorted(GE.glob("*.dcm"))
    for path in files:
        orthanc.upload(path)
    head = pydicom.dcmread(files[0], stop_before_pixels=True)
    uid, study = str(head.SeriesInstanceUID), str(head.StudyInstanceUID)
    body = {"model": "ct_classifier", "series_uid": uid, "study_uid": study, "source": "pacs"}

    created = requests.post(front_door.base_url + "/v1/jobs", json=body, timeout=30)

    assert created.status_code == 202, created.text
    job = front_door.job(created.json()["job_id"])
    assert job["state"] == "SUCCEEDED", job
    assert len(job["result"]["slices"]) == len(files)
    data_root = front_door.settings.data_root
    assert not (data_root / uid).exists()  # the worker read its pulled copy in the cache
    assert len(list((data_root / ".pacs" / "pacs" / uid).glob("*.dcm"))) == len(files)
    unknown = requests.post(
        front_door.base_url + "/v1/jobs", json={**body, "source": "elsewhere"}, timeout=30
    )
    assert unknown.status_code == 400 and "elsewhere" in unknown.json()["error"]


def test_a_stow_rs_upload_is_stored_and_routed(front_door: FrontDoor, orthanc: Orthanc) -> None:
    dicom = front_door.settings.dicom
    files = sorted(B70F.glob("*.dcm"))
    boundary = "flaskmodel-test-boundary"
    parts = [
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + p.read_bytes()
        + b"\r\n"
        for p in files
    ]
    answer = requests.post(
        f"http://{dicom.http_host}:{dicom.http_port}/dicomweb/studies",
        data=b"".join(parts) + f"--{boundary}--\r\n".encode(),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=60,
    )

    assert answer.status_code == 200, answer.text
    referenced = answer.json()["00081199"]["Value"]
    assert len(referenced) == len(files)
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    stored = list((front_door.settings.data_root / uid).glob("*.dcm"))
    assert len(stored) == len(files)
    series = front_door.series(uid, "ROUTED")
    assert series["calling_ae_title"] == "STOW-RS"
    job = front_door.job(series["job_id"])
    assert job["state"] == "SUCCEEDED" and len(job["result"]["slices"]) == len(files)
    assert sr_in_orthanc(orthanc, series["job_id"]).SeriesDescription.startswith("FlaskModel")
