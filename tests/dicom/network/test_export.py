"""Sending a job's DICOM SR to a real Orthanc: C-STORE to its DICOM port and STOW-RS to its
DICOMweb API, and the errors that say whether another try can help."""

from __future__ import annotations

import uuid
from io import BytesIO

import pydicom
import pytest
from pydicom.dataset import Dataset

from flaskmodel.dicom.network.export import backoff_schedule, is_retryable, send_report
from flaskmodel.dicom.network.sr import build_report
from flaskmodel.dicom.series import Series, scan_series
from flaskmodel.errors import RemoteAuthFailed, RemoteRejected, RemoteUnavailable
from flaskmodel.settings.dicom import DicomDestination, DicomSettings
from tests import procs
from tests.dicom.conftest import Samples
from tests.dicom.network.conftest import StoredSeries
from tests.dicom.network.test_sr import fake_result, read_findings
from tests.orthanc import Orthanc

CALLING_AE = "FLASKMODEL"


@pytest.fixture(scope="module")
def chest(samples: Samples) -> tuple[Series, Dataset]:
    series = scan_series(samples.root, samples.j2k)
    return series, pydicom.dcmread(series.slices[0].path, stop_before_pixels=True)


def report_for(chest: tuple[Series, Dataset], job_id: str | None = None) -> Dataset:
    series, source = chest
    return build_report(job_id or f"job-{uuid.uuid4().hex}", fake_result(series), source)


def study_series(orthanc: Orthanc, stored: StoredSeries) -> list[str]:
    (study,) = [r["ID"] for r in orthanc.lookup(stored.study_uid) if r["Type"] == "Study"]
    found: list[str] = orthanc.get(f"/studies/{study}")["Series"]
    return found


def dimse(orthanc: Orthanc, **overrides: object) -> DicomDestination:
    values: dict[str, object] = {
        "kind": "dimse",
        "host": "127.0.0.1",
        "port": orthanc.dicom_port,
        "ae_title": orthanc.aet,
        "timeout_seconds": 10,
    }
    return DicomDestination.model_validate({**values, **overrides})


def dicomweb(orthanc: Orthanc, **overrides: object) -> DicomDestination:
    values: dict[str, object] = {
        "kind": "dicomweb",
        "url": orthanc.dicomweb_url,
        "username": orthanc.username,
        "password": orthanc.password,
        "timeout_seconds": 10,
    }
    return DicomDestination.model_validate({**values, **overrides})


def check_stored(orthanc: Orthanc, report: Dataset, stored: StoredSeries) -> None:
    """Orthanc holds the report once, in the chest study, with one label per slice."""
    (instance_id,) = orthanc.instance_ids(report.SOPInstanceUID)
    tags = orthanc.tags(instance_id)
    assert tags["StudyInstanceUID"] == stored.study_uid
    assert tags["Modality"] == "SR"
    assert tags["SeriesDescription"] == "FlaskModel ct_classifier results"
    # Same study in Orthanc's own index, beside the source series.
    study_id = orthanc.get(f"/instances/{instance_id}/study")["ID"]
    source_series = orthanc.series_instances(stored.series_uid)[0]["ParentSeries"]
    assert source_series in orthanc.get(f"/studies/{study_id}")["Series"]
    assert len(orthanc.series_instances(report.SeriesInstanceUID)) == 1

    sr = pydicom.dcmread(BytesIO(orthanc.file(instance_id)))
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    (series_ref,) = evidence.ReferencedSeriesSequence
    assert series_ref.SeriesInstanceUID == stored.series_uid
    findings = read_findings(sr)
    assert sorted(f.sop_instance_uid for f in findings) == sorted(stored.sop_uids)
    assert [f.label for f in findings] == ["chest"] * 12 + ["abdomen"] * 8


def test_c_store_puts_the_report_into_the_source_study_once(
    orthanc: Orthanc, chest_in_orthanc: StoredSeries, chest: tuple[Series, Dataset]
) -> None:
    before = study_series(orthanc, chest_in_orthanc)
    report = report_for(chest, "job-c-store")
    outcome = send_report(report, "pacs", dimse(orthanc), CALLING_AE)
    assert (outcome.destination, outcome.kind) == ("pacs", "dimse")
    assert outcome.sop_instance_uid == report.SOPInstanceUID
    assert outcome.detail == "C-STORE status 0x0000"
    check_stored(orthanc, report, chest_in_orthanc)

    # The job ran again (redelivered): the rebuilt report is the same instance.
    send_report(report_for(chest, "job-c-store"), "pacs", dimse(orthanc), CALLING_AE)
    check_stored(orthanc, report, chest_in_orthanc)
    assert len(study_series(orthanc, chest_in_orthanc)) == len(before) + 1


def test_stow_puts_the_report_into_the_source_study_once(
    orthanc: Orthanc, chest_in_orthanc: StoredSeries, chest: tuple[Series, Dataset]
) -> None:
    before = study_series(orthanc, chest_in_orthanc)
    report = report_for(chest, "job-stow")
    outcome = send_report(report, "web", dicomweb(orthanc), CALLING_AE)
    assert (outcome.destination, outcome.kind) == ("web", "dicomweb")
    assert outcome.sop_instance_uid == report.SOPInstanceUID
    check_stored(orthanc, report, chest_in_orthanc)

    again = report_for(chest, "job-stow")
    send_report(again, "web", dicomweb(orthanc), CALLING_AE)
    send_report(again, "pacs", dimse(orthanc), CALLING_AE)  # and by the other route
    check_stored(orthanc, report, chest_in_orthanc)
    assert len(study_series(orthanc, chest_in_orthanc)) == len(before) + 1


# pynetdicom 3.0 drops the socket of a refused connection without closing it (a ResourceWarning
# from its own thread; the descriptor is freed with the object).
@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
def test_closed_port_is_retryable(chest: tuple[Series, Dataset]) -> None:
    report = report_for(chest)
    closed = procs.free_port()  # nothing listens there
    destinations = [
        DicomDestination(kind="dimse", host="127.0.0.1", port=closed, ae_title="PACS"),
        DicomDestination(kind="dicomweb", url=f"http://127.0.0.1:{closed}/dicom-web"),
    ]
    for destination in destinations:
        with pytest.raises(RemoteUnavailable, match="unreachable") as caught:
            send_report(report, "down", destination, CALLING_AE)
        assert is_retryable(caught.value)


def test_wrong_called_ae_title_is_permanent(
    orthanc: Orthanc, chest: tuple[Series, Dataset]
) -> None:
    report = report_for(chest)
    with pytest.raises(RemoteRejected, match=r"Rejected Permanent.*Called AE title") as caught:
        send_report(report, "pacs", dimse(orthanc, ae_title="NOT-PACS"), CALLING_AE)
    assert not is_retryable(caught.value)
    assert orthanc.instance_ids(report.SOPInstanceUID) == []


def test_wrong_stow_credentials_are_permanent(
    orthanc: Orthanc, chest: tuple[Series, Dataset]
) -> None:
    report = report_for(chest)
    with pytest.raises(RemoteAuthFailed, match="401") as caught:
        send_report(report, "web", dicomweb(orthanc, password="wrong"), CALLING_AE)
    assert not is_retryable(caught.value)
    # A URL that is not the DICOMweb API: 404, final as well.
    with pytest.raises(RemoteRejected, match="404") as caught:
        send_report(report, "web", dicomweb(orthanc, url=orthanc.http_url + "/nowhere"), CALLING_AE)
    assert not is_retryable(caught.value)
    assert orthanc.instance_ids(report.SOPInstanceUID) == []


def test_backoff_doubles_from_the_settings() -> None:
    assert backoff_schedule(DicomSettings()) == [2.0, 4.0, 8.0, 16.0]
    assert backoff_schedule(DicomSettings(export_attempts=3, export_backoff_seconds=0.5)) == [
        0.5,
        1.0,
    ]
    assert backoff_schedule(DicomSettings(export_attempts=1)) == []
