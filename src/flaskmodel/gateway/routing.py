"""Which model classifies a complete received series: the first ``dicom.routes`` rule it matches."""

from __future__ import annotations

import re

from flaskmodel.schemas import ReceivedSeries
from flaskmodel.settings.dicom import DicomRoute


def _matches(pattern: str | None, value: str | None) -> bool:
    if pattern is None:
        return True
    return re.search(pattern, value or "", re.IGNORECASE) is not None


def route_for(routes: list[DicomRoute], series: ReceivedSeries) -> DicomRoute | None:
    """The first rule every condition of which the series meets (None: store only)."""
    for route in routes:
        if (
            series.received >= route.min_instances
            and _matches(route.modality, series.modality)
            and _matches(route.body_part, series.body_part_examined)
            and _matches(route.series_description, series.series_description)
            and _matches(route.calling_ae_title, series.calling_ae_title)
        ):
            return route
    return None
