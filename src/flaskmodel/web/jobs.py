"""``/v1/jobs``: submit, list, read and cancel jobs, and the slice thumbnails a series job's
worker rendered (``/v1/jobs/<id>/slices/<index>/thumbnail.png``)."""

from __future__ import annotations

import base64
from typing import Any

from flaskmodel.errors import InvalidRequest, NotFound
from flaskmodel.schemas import JobRequest, JobState, JobView, SubmitResponse
from flaskmodel.storage.redis import key
from flaskmodel.web.body import is_whole_number, parse, parse_json, read_prefer
from flaskmodel.web.call import Call, Raw, Reply
from flaskmodel.web.services import Services


def submit_job(svc: Services, job_request: JobRequest, call: Call) -> Reply:
    """Admit a job for ``call``'s caller (its ``Idempotency-Key`` header, if declared and sent,
    makes a repeat return the first job); 202 + Location when new, 200 for an idempotent repeat."""
    job_id, created = svc.submitter.submit(
        job_request, idempotency_key=call.headers.get("Idempotency-Key"), owner=call.owner
    )
    # A new job was accepted QUEUED (a worker may have started it already: its status URL says
    # so); an idempotent repeat answers with the first job's state now.
    state = JobState.QUEUED if created else svc.jobs.get(job_id).state
    status_url = f"{call.script_root}/v1/jobs/{job_id}"
    body = SubmitResponse(job_id=job_id, state=state, status_url=status_url)
    return 202 if created else 200, body.model_dump(mode="json"), {"Location": status_url}


def create_job(svc: Services, call: Call) -> Reply:
    """Submit; with ``Prefer: wait=N`` also wait up to N seconds for the job to finish, and
    answer it finished (200, the job as ``GET`` shows it) or as submitted (202)."""
    _, wait = read_prefer(call.headers.get("Prefer"))
    job_request = parse(JobRequest, parse_json(call.body()))
    status, body, headers = submit_job(svc, job_request, call)
    if wait is None:
        return status, body, headers
    view = wait_view(svc, body["job_id"], wait, call.owner, just_created=status == 202)
    if not view.state.terminal:
        return status, body, headers
    finished = view.model_dump(mode="json", exclude_none=True)
    return 200, {**finished, "status_url": body["status_url"]}, headers


def wait_view(
    svc: Services,
    job_id: str,
    seconds: float,
    who: str | None,
    *,
    just_created: bool = False,
) -> JobView:
    """The job as ``who`` (the caller's key id) may see it, once finished or after ``seconds``
    (capped at the longest wait) have passed; blocks without polling. ``just_created``: it was
    submitted by this request, so it is not read before the wait (it cannot have finished: a
    worker answers its wake-up at once)."""
    if not just_created:
        view = svc.jobs.get(job_id, who)
        if view.state.terminal or seconds <= 0:
            return view
    notice = None
    if seconds > 0:
        notice = svc.sync.wait_job(job_id, min(seconds, svc.settings.batching.max_timeout_seconds))
    return svc.jobs.get(job_id, who, woken_by=notice)


def list_jobs(svc: Services, call: Call) -> Reply:
    """The newest jobs, newest first (``?limit=``, 1-500, default 50), without results."""
    raw = call.query.get("limit", "50")
    if not is_whole_number(raw) or not 1 <= int(raw) <= 500:
        raise InvalidRequest("limit must be a whole number from 1 to 500")
    views = svc.jobs.recent(int(raw), call.owner)
    return 200, {"jobs": [v.model_dump(mode="json", exclude_none=True) for v in views]}, {}


def get_job(svc: Services, call: Call) -> Reply:
    """The job; with ``?wait=N`` block up to N seconds (no polling) until it has finished."""
    seconds = _wait_seconds(call.query.get("wait"), svc.settings.batching.max_timeout_seconds)
    view = wait_view(svc, call.params["job_id"], seconds, call.owner)
    return 200, view.model_dump(mode="json", exclude_none=True), {}


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


def cancel_job(svc: Services, call: Call) -> Reply:
    view = svc.submitter.cancel(call.params["job_id"], call.owner)
    return 200, view.model_dump(mode="json", exclude_none=True), {}


def thumbnail(svc: Services, call: Call) -> Reply:
    job_id, index = call.params["job_id"], call.params["index"]
    svc.jobs.check_owner(job_id, call.owner)
    encoded: Any = svc.redis.hget(key("thumbs", job_id), str(index))
    if encoded is None:
        raise NotFound(f"no thumbnail of slice {index} for job '{job_id}'")
    png = Raw(base64.b64decode(str(encoded)), "image/png")
    return 200, png, {"Cache-Control": "max-age=3600"}
