"""Fixtures for the DICOM networking tests: the session's real Orthanc (``tests/conftest.py``)
holding the 20-slice JPEG 2000 chest series."""

from __future__ import annotations

from dataclasses import dataclass

import pydicom
import pytest

from tests.dicom.conftest import Samples
from tests.orthanc import Orthanc


@dataclass(frozen=True)
class StoredSeries:
    """A sample series uploaded into Orthanc."""

    folder: str
    study_uid: str
    series_uid: str
    sop_uids: tuple[str, ...]


@pytest.fixture(scope="session")
def chest_in_orthanc(orthanc: Orthanc, samples: Samples) -> StoredSeries:
    """The 20-slice JPEG 2000 chest series, uploaded once (REST ``POST /instances``)."""
    files = samples.files(samples.j2k)
    for path in files:
        orthanc.upload(path)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    sop_uids = tuple(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files)
    assert len(orthanc.series_instances(samples.j2k_uid)) == len(files)
    return StoredSeries(samples.j2k, str(first.StudyInstanceUID), samples.j2k_uid, sop_uids)
