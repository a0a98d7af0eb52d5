"""The original design's routes, kept working on top of series jobs.

- ``GET /inference/<series_uid>/<start>/<end>`` starts a series job over slices ``[start, end)``
  with the default series model and answers ``{"task_id", ...}``.
- ``GET /get_result/<task_id>`` answers the result JSON once the job succeeded, else its state.
"""

from __future__ import annotations

from typing import Any

from flaskmodel.schemas import JobRequest, JobState
from flaskmodel.web.body import parse
from flaskmodel.web.call import Call, Reply
from flaskmodel.web.jobs import submit_job
from flaskmodel.web.services import Services


def inference(svc: Services, call: Call) -> Reply:
    params = call.params
    job_request = parse(
        JobRequest,
        {
            "model": svc.settings.series.default_model,
            "series_uid": params["series_uid"],
            "slices": {"start": params["start"], "stop": params["end"]},
        },
    )
    status, body, headers = submit_job(svc, job_request, call)
    return status, {"task_id": body["job_id"], **body}, headers


def get_result(svc: Services, call: Call) -> Reply:
    task_id: str = call.params["task_id"]
    view = svc.jobs.get(task_id, call.owner)
    if view.state is JobState.SUCCEEDED and view.result is not None:
        return 200, view.result, {}
    body: dict[str, Any] = {
        "task_id": task_id,
        "state": view.state.value,
        "progress": view.progress.model_dump(),
    }
    if view.error is not None:
        body["error"] = view.error.model_dump()
    return 200 if view.state.terminal else 202, body, {}
