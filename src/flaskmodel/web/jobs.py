"""``/v1/jobs``: submit, read and cancel jobs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, request

from flaskmodel.errors import InvalidRequest
from flaskmodel.schemas import JobRequest, JobState, JobView, SubmitResponse
from flaskmodel.web.auth import owner
from flaskmodel.web.body import is_whole_number, json_body, parse, prefer
from flaskmodel.web.services import Services, services

logger = logging.getLogger(__name__)

bp = Blueprint("jobs", __name__)


@dataclass(frozen=True)
class Caller:
    """What a job route needs of its request besides the body (``fast_predict`` fills it in
    without Flask)."""

    owner: str | None  # the API key id (None: authentication off)
    idempotency_key: str | None = None
    script_root: str = ""  # where the app is mounted (status URLs start with it)


def caller() -> Caller:
    """This Flask request's ``Caller``."""
    return Caller(owner(), request.headers.get("Idempotency-Key"), request.script_root)


def submit(job_request: JobRequest) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Admit a job; 202 + Location when new, 200 for an idempotent repeat."""
    return submit_job(services(), job_request, caller())


def submit_job(
    svc: Services, job_request: JobRequest, who: Caller
) -> tuple[dict[str, Any], int, dict[str, str]]:
    """``submit`` without a Flask request."""
    job_id, created = svc.submitter.submit(
        job_request, idempotency_key=who.idempotency_key, owner=who.owner
    )
    # A new job was accepted QUEUED (a worker may have started it already: its status URL says
    # so); an idempotent repeat answers with the first job's state now.
    state = JobState.QUEUED if created else svc.jobs.get(job_id).state
    status_url = f"{who.script_root}/v1/jobs/{job_id}"
    body = SubmitResponse(job_id=job_id, state=state, status_url=status_url)
    return body.model_dump(mode="json"), 202 if created else 200, {"Location": status_url}


@bp.post("/v1/jobs")
def create_job() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Submit; with ``Prefer: wait=N`` also wait up to N seconds for the job to finish, and
    answer it finished (200, the job as ``GET`` shows it) or as submitted (202)."""
    _, wait = prefer()
    return create_answer(services(), parse(JobRequest, json_body()), caller(), wait)


def create_answer(
    svc: Services, job_request: JobRequest, who: Caller, wait: float | None
) -> tuple[dict[str, Any], int, dict[str, str]]:
    """``create_job`` without a Flask request (``wait``: the ``Prefer: wait`` seconds)."""
    body, status, headers = submit_job(svc, job_request, who)
    if wait is None:
        return body, status, headers
    view = wait_view(svc, body["job_id"], wait, who.owner, just_created=status == 202)
    if not view.state.terminal:
        return body, status, headers
    finished = view.model_dump(mode="json", exclude_none=True)
    return {**finished, "status_url": body["status_url"]}, 200, headers


def finished_view(job_id: str, seconds: float, *, just_created: bool = False) -> JobView:
    """The job, once finished or after ``seconds`` (capped at the longest wait) have passed;
    blocks without polling. ``just_created``: it was submitted by this request, so it is not
    read before the wait (it cannot have finished: a worker answers its wake-up at once)."""
    return wait_view(services(), job_id, seconds, owner(), just_created=just_created)


def wait_view(
    svc: Services,
    job_id: str,
    seconds: float,
    who: str | None,
    *,
    just_created: bool = False,
) -> JobView:
    """``finished_view`` without a Flask request (``who``: the caller's key id)."""
    if not just_created:
        view = svc.jobs.get(job_id, who)
        if view.state.terminal or seconds <= 0:
            return view
    notice = None
    if seconds > 0:
        notice = svc.sync.wait_job(job_id, min(seconds, svc.settings.batching.max_timeout_seconds))
    return svc.jobs.get(job_id, who, woken_by=notice)


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
    return get_answer(services(), job_id, request.args.get("wait"), owner())


def get_answer(svc: Services, job_id: str, wait: str | None, who: str | None) -> dict[str, Any]:
    """``get_job`` without a Flask request (``wait``: the query's text)."""
    seconds = _wait_seconds(wait, svc.settings.batching.max_timeout_seconds)
    return wait_view(svc, job_id, seconds, who).model_dump(mode="json", exclude_none=True)


def _wait_seconds(raw: str | None, limit: float) -> float:
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
