"""The original design's routes, kept working on top of series jobs.

- ``GET /inference/<series_uid>/<start>/<end>`` starts a series job over slices ``[start, end)``
  with the default series model and answers ``{"task_id", ...}``.
- ``GET /get_result/<task_id>`` answers the result JSON once the job succeeded, else its state.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint

from flaskmodel.schemas import JobRequest, JobState
from flaskmodel.web.auth import owner
from flaskmodel.web.body import parse
from flaskmodel.web.jobs import submit
from flaskmodel.web.services import services

logger = logging.getLogger(__name__)

bp = Blueprint("legacy", __name__)


@bp.get("/inference/<series_uid>/<int:start>/<int:end>")
def inference(series_uid: str, start: int, end: int) -> tuple[dict[str, Any], int, dict[str, str]]:
    job_request = parse(
        JobRequest,
        {
            "model": services().settings.series.default_model,
            "series_uid": series_uid,
            "slices": {"start": start, "stop": end},
        },
    )
    body, status, headers = submit(job_request)
    return {"task_id": body["job_id"], **body}, status, headers


@bp.get("/get_result/<task_id>")
def get_result(task_id: str) -> tuple[dict[str, Any], int]:
    view = services().jobs.get(task_id, owner())
    if view.state is JobState.SUCCEEDED and view.result is not None:
        return view.result, 200
    body: dict[str, Any] = {
        "task_id": task_id,
        "state": view.state.value,
        "progress": view.progress.model_dump(),
    }
    if view.error is not None:
        body["error"] = view.error.model_dump()
    return body, 200 if view.state.terminal else 202
