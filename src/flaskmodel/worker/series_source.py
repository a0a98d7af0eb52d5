"""Where a series job's files are: the data root, or a DICOMweb source's cache inside it (pulled
with WADO-RS before the scan, so a worker needs no shared disk)."""

from __future__ import annotations

from pathlib import Path

from flaskmodel.dicom.network.pull import cache_root, pull_series
from flaskmodel.errors import InvalidRequest
from flaskmodel.schemas import JobRequest
from flaskmodel.settings import Settings


def series_root(request: JobRequest, settings: Settings) -> Path:
    """The folder the job's series id is relative to (nothing is fetched)."""
    if request.source is None:
        return settings.data_root
    return cache_root(settings.data_root, request.source)


def fetch_series(request: JobRequest, settings: Settings) -> Path:
    """``series_root``, after bringing a pulled series' missing instances into the cache."""
    if request.source is not None:
        source = settings.dicom.sources.get(request.source)
        if source is None:
            raise InvalidRequest(f"unknown DICOMweb source '{request.source}' on this worker")
        assert request.study_uid is not None and request.series_uid is not None
        pull_series(
            settings.data_root, request.source, source, request.study_uid, request.series_uid
        )
    return series_root(request, settings)
