"""``/v1/series/<uid>``: what the DICOM front door received of a series, where it stands and its
job; ``/v1/series/<uid>/results``: the per-slice labels its jobs stored for other systems."""

from __future__ import annotations

import re

from flaskmodel.errors import InvalidRequest, InvalidSeriesId, JobNotFound, NotFound
from flaskmodel.schemas import MODEL_NAME_PATTERN, SERIES_UID_PATTERN
from flaskmodel.web.call import Call, Reply
from flaskmodel.web.services import Services


def _series_uid(call: Call) -> str:
    series_uid: str = call.params["series_uid"]
    if not re.match(SERIES_UID_PATTERN, series_uid):
        raise InvalidSeriesId(f"invalid series id {series_uid[:64]!r}")
    return series_uid


def received_series(svc: Services, call: Call) -> Reply:
    """The received series' record with its current job (state, progress, exports; the result
    is the job's own: ``/v1/jobs/<id>``, or the labels at ``/v1/series/<uid>/results``)."""
    record = svc.received.get(_series_uid(call))
    if record.job_id is not None:
        try:
            record.job = svc.jobs.get(record.job_id).model_copy(update={"result": None})
        except JobNotFound:
            record.job = None  # expired: the record outlives it
    return 200, record.model_dump(mode="json"), {}


def series_results(svc: Services, call: Call) -> Reply:
    series_uid = _series_uid(call)
    model = call.query.get("model", svc.settings.series.default_model)
    if not re.match(MODEL_NAME_PATTERN, model):
        raise InvalidRequest(f"invalid model name {model[:64]!r}")
    found = svc.series_results.read(series_uid, model)
    if found is None:
        raise NotFound(f"no results for series '{series_uid}' and model '{model}'")
    return 200, {"series_uid": series_uid, "model": model, **found}, {}
