"""``JobRecords``: reading job records (the read side of ``JobStore``, which adds the writes).

What each reader needs is one method here, so that no module outside ``flaskmodel.jobs`` knows
the record's keys or fields (see ``keys`` and ``store``). Processes that only read (the orphan
sweeper, ``/metrics``, job waits on the web tier's blocking client) use this class alone.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any, NamedTuple

import redis
from redis.client import Pipeline

from flaskmodel.errors import JobNotFound
from flaskmodel.jobs.keys import RECENT, done_key, owner_index, record_key, result_key
from flaskmodel.schemas import (
    ExportState,
    JobAttempt,
    JobError,
    JobRequest,
    JobState,
    JobView,
    JobWorker,
    Progress,
)

# A waiter arrives within its request's lifetime; the notice need not outlive that by much.
DONE_TTL = 600

#: Prefix of the job hash fields holding one export's state each.
EXPORT_FIELD = "export:"

# What a delivery reads of its job as it starts (``delivery_in``).
_DELIVERY_FIELDS = ["request", "version", "created_at", "started_at"]
# What tells a stalled job from one that moves (``unfinished``).
_FINGERPRINT_FIELDS = ["state", "attempts", "started_at", "chunk"]
# Job states read per pipeline when counting them.
_CHUNK = 1000


class Delivery(NamedTuple):
    """What a starting delivery needs of its job's record."""

    request: JobRequest
    version: int | None  # pinned at submit (or by an earlier delivery)
    queue_wait: float  # seconds from submit to the job's first start


class JobRecords:
    """Reads job records."""

    def __init__(self, client: redis.Redis, *, done_ttl: int = DONE_TTL) -> None:
        self._redis = client
        self._done_ttl = done_ttl

    def get(self, job_id: str, owner: str | None = None, *, woken_by: str | None = None) -> JobView:
        """The job; with ``owner``, a job of another owner is not found. ``woken_by``: the end
        notice a waiter popped from the job's done list, put back (in the same round trip) so
        that every other waiter on the job wakes too."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(record_key(job_id))
        pipe.get(result_key(job_id))
        if woken_by is not None:
            pipe.lpush(done_key(job_id), woken_by)
            pipe.expire(done_key(job_id), self._done_ttl)
        record, result, *_ = pipe.execute()
        if not record or not _owned(record.get("owner"), owner):
            raise JobNotFound(f"job '{job_id}' not found (unknown or expired)")
        return view(job_id, record, result)

    def wait_end(self, job_id: str, timeout: float) -> str | None:
        """Block until the job ends or ``timeout`` seconds pass (> 0: Redis reads 0 as
        forever); the end notice popped (give it back with ``get(woken_by=...)``), or None."""
        popped = self._redis.blpop([done_key(job_id)], timeout=timeout)
        return None if popped is None else str(popped[1])

    def check_owner(self, job_id: str, owner: str | None) -> None:
        """Raise JobNotFound unless the job exists and (given ``owner``) belongs to it."""
        if owner is None:
            return
        found = self._redis.hget(record_key(job_id), "owner")
        if not _owned(None if found is None else str(found), owner):
            raise JobNotFound(f"job '{job_id}' not found (unknown or expired)")

    def recent(self, limit: int, owner: str | None = None) -> list[JobView]:
        """The newest ``limit`` jobs still on record (of ``owner``, when given), newest first,
        without their results."""
        index = RECENT if owner is None else owner_index(owner)
        ids = [str(i) for i in self._redis.zrevrange(index, 0, max(0, limit - 1))]
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(record_key(job_id))
        views = []
        for job_id, record in zip(ids, pipe.execute(), strict=True):
            if record:
                views.append(view(job_id, record, None))
            else:  # expired: forget it
                self._redis.zrem(index, job_id)
        return views

    def count_states(self) -> Counter[str]:
        """How many jobs on record are in each state (every state present, maybe 0)."""
        counts = Counter({state.value: 0 for state in JobState})
        ids = [str(i) for i in self._redis.zrange(RECENT, 0, -1)]
        for first in range(0, len(ids), _CHUNK):
            pipe = self._redis.pipeline(transaction=False)
            for job_id in ids[first : first + _CHUNK]:
                pipe.hget(record_key(job_id), "state")
            counts.update(str(s) for s in pipe.execute() if s)
        return counts

    def request(self, job_id: str) -> JobRequest:
        raw = self._redis.hget(record_key(job_id), "request")
        if raw is None:
            raise JobNotFound(f"job '{job_id}' not found (unknown or expired)")
        return JobRequest.model_validate_json(raw)

    def state(self, job_id: str) -> JobState | None:
        raw = self._redis.hget(record_key(job_id), "state")
        return JobState(str(raw)) if raw else None

    def model_of(self, job_id: str) -> str | None:
        raw = self._redis.hget(record_key(job_id), "model")
        return str(raw) if raw else None

    def ended_model(self, job_id: str) -> str | None:
        """The model of the job once it has ended; None while it runs or when unknown."""
        model, state = self._redis.hmget(record_key(job_id), ["model", "state"])
        return str(model) if model and state and JobState(str(state)).terminal else None

    def labels(self, job_id: str) -> tuple[str, str]:
        """(model, kind) of the job, empty when unknown: its metrics labels."""
        model, kind = self._redis.hmget(record_key(job_id), ["model", "kind"])
        return str(model or ""), str(kind or "")

    def queue_wait(self, job_id: str) -> tuple[float | None, str]:
        """Seconds from submit to the job's first start (None before it), and its model."""
        created, started, model = self._redis.hmget(
            record_key(job_id), ["created_at", "started_at", "model"]
        )
        if not created or not started:
            return None, str(model or "")
        return max(0.0, _epoch(started) - _epoch(created)), str(model or "")

    def running_for(self, job_id: str) -> float | None:
        """Seconds since the job's current delivery (of its current chunk) started; None when it
        has not started."""
        delivered, started = self._redis.hmget(record_key(job_id), ["delivered_at", "started_at"])
        since = delivered or started
        return None if not since else time.time() - _epoch(since)

    def delivery_in(self, pipe: Pipeline, job_id: str) -> None:
        """Queue the read of what a starting delivery needs on ``pipe`` (after its start: pass
        the reply to ``delivery``)."""
        pipe.hmget(record_key(job_id), _DELIVERY_FIELDS)

    @staticmethod
    def delivery(reply: list[Any]) -> Delivery:
        request, version, created, started = reply
        return Delivery(
            JobRequest.model_validate_json(request),
            int(version) if version else None,
            max(0.0, _epoch(started) - _epoch(created)) if created and started else 0.0,
        )

    def unfinished(self, ids: list[str]) -> dict[str, tuple[str, str, str, str]]:
        """The jobs of ``ids`` still QUEUED or RUNNING: id -> (state, attempts, started_at,
        chunk), which moves whenever a delivery starts or hands over."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(record_key(job_id), _FINGERPRINT_FIELDS)
        found = {}
        for job_id, (state, attempts, started, chunk) in zip(ids, pipe.execute(), strict=True):
            if state in (JobState.QUEUED.value, JobState.RUNNING.value):
                found[job_id] = (str(state), str(attempts), str(started), str(chunk))
        return found

    def exports(self, job_id: str) -> list[ExportState]:
        """Where the job's DICOM SR goes and how far each export got (request order)."""
        record = self._redis.hgetall(record_key(job_id))
        return _exports({str(k): str(v) for k, v in record.items()}) or []


def view(job_id: str, record: dict[str, str], result: str | None) -> JobView:
    """The API's view of a job record (and its result document, if read)."""
    error = None
    if record.get("error_type"):
        error = JobError(type=record["error_type"], message=record.get("error_message", ""))
    return JobView(
        job_id=job_id,
        state=JobState(record["state"]),
        kind=record["kind"],
        model=record["model"],
        version=int(record["version"]) if record.get("version") else None,
        series_uid=record.get("series_uid"),
        progress=Progress(done=int(record.get("done", 0)), total=int(record.get("total", 0))),
        attempts=int(record.get("attempts", 0)),
        created_at=record["created_at"],
        started_at=record.get("started_at"),
        finished_at=record.get("finished_at"),
        result=json.loads(result) if result else None,
        error=error,
        exports=_exports(record),
        worker=_worker(record.get("worker")),
        attempts_history=_history(record.get("attempts_history")),
    )


def _worker(raw: str | None) -> JobWorker | None:
    """The worker of the record's current delivery: None before a start, and for a record
    written by a worker of an earlier release (``host:pid``, not JSON) during a rollout."""
    if not raw or not raw.startswith("{"):
        return None
    return JobWorker.model_validate_json(raw)


def _history(raw: str | None) -> list[JobAttempt] | None:
    return [JobAttempt.model_validate(entry) for entry in json.loads(raw)] if raw else None


def _exports(record: dict[str, str]) -> list[ExportState] | None:
    """The export states in a job record, in the order the request named the destinations."""
    found = {
        name.removeprefix(EXPORT_FIELD): ExportState.model_validate_json(value)
        for name, value in record.items()
        if name.startswith(EXPORT_FIELD)
    }
    if not found:
        return None
    order = JobRequest.model_validate_json(record["request"]).exports or []
    ranked = {name: i for i, name in enumerate(order)}
    return sorted(found.values(), key=lambda e: ranked.get(e.destination, len(ranked)))


def _owned(recorded: str | None, owner: str | None) -> bool:
    return owner is None or recorded == owner


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _epoch(stamp: Any) -> float:
    return datetime.fromisoformat(str(stamp)).timestamp()
