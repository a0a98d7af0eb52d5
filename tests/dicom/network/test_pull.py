"""Pulling a series from a real Orthanc over DICOMweb (WADO-RS) into the PACS cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydantic import SecretStr
from pydicom.uid import generate_uid

from flaskmodel.dicom.network.pull import PACS_CACHE, pull_series
from flaskmodel.dicom.pixels import load_hu
from flaskmodel.dicom.series import scan_series
from flaskmodel.errors import (
    InvalidRequest,
    RemoteAuthFailed,
    RemoteUnavailable,
    SeriesNotFound,
)
from flaskmodel.settings.dicom import DicomWebSource
from tests import orthanc as orthanc_helper
from tests import procs
from tests.dicom.conftest import Samples
from tests.dicom.network.conftest import StoredSeries
from tests.orthanc import Orthanc


def source_of(orthanc: Orthanc, **overrides: object) -> DicomWebSource:
    values: dict[str, object] = {
        "url": orthanc.dicomweb_url,
        "username": orthanc.username,
        "password": orthanc.password,
        "timeout_seconds": 30,
    }
    values.update(overrides)
    return DicomWebSource.model_validate(values)


def test_pulled_series_scans_like_the_original(
    orthanc: Orthanc, chest_in_orthanc: StoredSeries, samples: Samples, data_root: Path
) -> None:
    chest = chest_in_orthanc
    pulled = pull_series(data_root, "pacs", source_of(orthanc), chest.study_uid, chest.series_uid)

    assert pulled.root == data_root / PACS_CACHE / "pacs"
    assert pulled.folder == pulled.root / chest.series_uid
    assert (pulled.instances, pulled.downloaded, pulled.removed) == (20, 20, 0)
    assert sorted(p.name for p in pulled.folder.iterdir()) == sorted(
        f"{uid}.dcm" for uid in chest.sop_uids
    )

    original = scan_series(samples.root, samples.j2k)
    copy = scan_series(pulled.root, pulled.series_uid)
    assert copy.uid == original.uid == chest.series_uid
    assert [s.sop_instance_uid for s in copy.slices] == [
        s.sop_instance_uid for s in original.slices
    ]
    assert [s.z for s in copy.slices] == [s.z for s in original.slices]
    assert [s.instance_number for s in copy.slices] == [s.instance_number for s in original.slices]
    assert (copy.sort_method, copy.spacing, copy.warnings) == (
        original.sort_method,
        original.spacing,
        original.warnings,
    )
    # Stored as the source holds it (JPEG 2000, not transcoded), and it reads against the data
    # root the worker uses.
    first = pydicom.dcmread(copy.slices[0].path, stop_before_pixels=True)
    source_file = pydicom.dcmread(original.slices[0].path, stop_before_pixels=True)
    assert first.file_meta.TransferSyntaxUID == source_file.file_meta.TransferSyntaxUID
    np.testing.assert_array_equal(
        load_hu(copy.slices[0], data_root), load_hu(original.slices[0], samples.root)
    )


def test_pulling_again_downloads_only_what_is_missing(
    orthanc: Orthanc, chest_in_orthanc: StoredSeries, data_root: Path
) -> None:
    chest = chest_in_orthanc
    source = source_of(orthanc)
    first = pull_series(data_root, "pacs", source, chest.study_uid, chest.series_uid)
    stamps = {p.name: p.stat().st_mtime_ns for p in first.folder.iterdir()}

    again = pull_series(data_root, "pacs", source, chest.study_uid, chest.series_uid)
    assert (again.instances, again.downloaded, again.removed) == (20, 0, 0)
    assert {p.name: p.stat().st_mtime_ns for p in again.folder.iterdir()} == stamps

    # Three instances lost (fetched one by one) and one the source no longer lists (removed).
    for uid in chest.sop_uids[:3]:
        (first.folder / f"{uid}.dcm").unlink()
    stale = first.folder / f"{generate_uid()}.dcm"
    stale.write_bytes((first.folder / f"{chest.sop_uids[5]}.dcm").read_bytes())
    repaired = pull_series(data_root, "pacs", source, chest.study_uid, chest.series_uid)
    assert (repaired.downloaded, repaired.removed) == (3, 1)
    assert not stale.exists()
    assert sorted(p.name for p in repaired.folder.iterdir()) == sorted(stamps)
    assert not [p for p in repaired.folder.iterdir() if p.name.startswith(".")]


def test_wrong_credentials_are_an_auth_error(
    orthanc: Orthanc, chest_in_orthanc: StoredSeries, data_root: Path
) -> None:
    chest = chest_in_orthanc
    for source in (
        source_of(orthanc, password="wrong"),
        source_of(orthanc, username=None, password=None, token=SecretStr("not-a-token")),
    ):
        with pytest.raises(RemoteAuthFailed, match=r"refused our credentials .*401"):
            pull_series(data_root, "pacs", source, chest.study_uid, chest.series_uid)
    assert not (data_root / PACS_CACHE).exists()


def test_unknown_series_is_not_found(
    orthanc: Orthanc, chest_in_orthanc: StoredSeries, data_root: Path
) -> None:
    source = source_of(orthanc)
    unknown = generate_uid()
    with pytest.raises(SeriesNotFound, match=unknown):
        pull_series(data_root, "pacs", source, chest_in_orthanc.study_uid, unknown)
    with pytest.raises(SeriesNotFound):
        pull_series(data_root, "pacs", source, generate_uid(), chest_in_orthanc.series_uid)


def test_unreachable_source_is_retryable(data_root: Path) -> None:
    closed = procs.free_port()  # nothing listens there
    source = DicomWebSource(url=f"http://127.0.0.1:{closed}/dicom-web", timeout_seconds=5)
    with pytest.raises(RemoteUnavailable, match="unreachable"):
        pull_series(data_root, "pacs", source, "1.2.3", "1.2.3.4")


@pytest.mark.parametrize(
    ("source_name", "study", "series"),
    [
        ("pacs", "1.2.3", "../../etc"),
        ("pacs", "1.2.3", "1.2." + "3" * 70),
        ("pacs", "1.2.x", "1.2.3"),
        ("../up", "1.2.3", "1.2.3"),
        (".pacs", "1.2.3", "1.2.3"),
    ],
)
def test_bad_names_are_refused_before_any_path_or_request(
    data_root: Path, source_name: str, study: str, series: str
) -> None:
    # The URL points nowhere: a request would fail as unreachable, not as invalid.
    source = DicomWebSource(url=f"http://127.0.0.1:{procs.free_port()}/dicom-web")
    with pytest.raises(InvalidRequest):
        pull_series(data_root, source_name, source, study, series)
    assert os.listdir(data_root) == []


def test_missing_orthanc_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(orthanc_helper, "ORTHANC", tmp_path / "no-such-Orthanc")
    with pytest.raises(RuntimeError, match="apt-get install orthanc orthanc-dicomweb"):
        orthanc_helper.start_orthanc(tmp_path / "orthanc")
