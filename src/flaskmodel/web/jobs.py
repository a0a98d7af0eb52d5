"""``/v1/jobs``: submit, read and cancel jobs."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, request, url_for

from flaskmodel.errors import InvalidRequest
from flaskmodel.schemas import JobRequest, JobState, JobView, SubmitResponse
from flaskmodel.web.auth import owner
from flaskmodel.web.body import is_whole_number, json_body, parse, prefer
from flaskmodel.web.services import services

logger = logging.getLogger(__name__)

bp = Blueprint("jobs", __name__)


def submit(job_request: JobRequest) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Admit a job; 202 + Location when new, 200 for an idempotent repeat."""
    svc = services()
    job_id, created = svc.submitter.submit(
        job_request, idempotency_key=request.headers.get("Idempotency-Key"), owner=owner()
    )
    # A new job was accepted QUEUED (a worker may have started it already: its status URL says
    # so); an idempotent repeat answers with the first job's state now.
    state = JobState.QUEUED if created else svc.jobs.get(job_id).state
    status_url = url_for("jobs.get_job", job_id=job_id)
    body = SubmitResponse(job_id=job_id, state=state, status_url=status_url)
    return body.model_dump(mode="json"), 202 if created else 200, {"Location": status_url}


@bp.post("/v1/jobs")
def create_job() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Submit; with ``Prefer: wait=N`` also wait up to N seconds for the job to finish, and
    answer it finished (200, the job as ``GET`` shows it) or as submitted (202)."""
    body, status, headers = submit(parse(JobRequest, json_body()))
    _, wait = prefer()
    if wait is None:
        return body, status, headers
    view = finished_view(body["job_id"], wait, just_created=status == 202)
    if not view.state.terminal:
        return body, status, headers
    finished = view.model_dump(mode="json", exclude_none=True)
    return {**finished, "status_url": body["status_url"]}, 200, headers


def finished_view(job_id: str, seconds: float, *, just_created: bool = False) -> JobView:
    """The job, once finished or after ``seconds`` (capped at the longest wait) have passed;
    blocks without polling. ``just_created``: it was submitted by this request, so it is not
    read before the wait (it cannot have finished: a worker answers its wake-up at once)."""
    svc = services()
    if not just_created:
        view = svc.jobs.get(job_id, owner())
        if view.state.terminal or seconds <= 0:
            return view
    notice = None
    if seconds > 0:
        notice = svc.sync.wait_job(job_id, min(seconds, svc.settings.batching.max_timeout_seconds))
    return svc.jobs.get(job_id, owner(), woken_by=notice)


@bp.get("/v1/jobs")
def list_jobs() -> dict[str, Any]:
    """The newest jobs, newest first (``?limit=``, 1-500, default 50), without results."""
    raw = request.args.get("limit", "50")
    if not is_whole_number(raw) or not 1 <= int(raw) <= 500:
        raise InvalidRequest("limit must be a whole number from 1 to 500")
    views = services().jobs.recent(int(raw), owner())
    return {"jobs": [v.model_dump(mode="json", exclude_none=True) for v in views]}


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str) -> dict[str, Any]:
    """The job; with ``?wait=N`` block up to N seconds (no polling) until it has finished."""
    view = finished_view(job_id, _wait_seconds(services().settings.batching.max_timeout_seconds))
    return view.model_dump(mode="json", exclude_none=True)


def _wait_seconds(limit: float) -> float:
    raw = request.args.get("wait")
    if raw is None:
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        raise InvalidRequest("wait must be a number of seconds") from None
    if not 0 <= seconds <= limit:
        raise InvalidRequest(f"wait must be between 0 and {limit:g} seconds")
    return seconds


@bp.delete("/v1/jobs/<job_id>")
def cancel_job(job_id: str) -> dict[str, Any]:
    return services().submitter.cancel(job_id, owner()).model_dump(mode="json", exclude_none=True)
