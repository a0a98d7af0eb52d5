"""Job records in Redis: created at submit time, moved through their states atomically.

Keys (all with the job TTL):

- ``flaskmodel:job:<id>`` hash: state, kind, model, version, series_uid, request (JSON),
  created_at/started_at/finished_at, delivered_at and worker (the current delivery and the
  ``host:pid`` running it), done/total,
  attempts (deliveries of the current chunk), chunk/handover (series jobs run as a sequence of
  chunk tasks), error_type/error_message, and ``export:<destination>`` (JSON ``ExportState``)
  per destination a series job's DICOM SR goes to.
- ``flaskmodel:result:<id>`` string: the result document (JSON).
- ``flaskmodel:idem:<key>`` string: the job id an ``Idempotency-Key`` made.
- ``flaskmodel:jobs`` sorted set: the newest job ids by creation time (at most ``RECENT_KEEP``).
- ``flaskmodel:jobs:owner:<key id>`` sorted set: the same per API key, when authentication is on.

Ownership: with authentication on, a job records the id of the API key that created it
(``owner``; never the key). Reads given an ``owner`` treat another key's job as unknown (404,
not 403: its existence is not revealed), and idempotency keys are scoped per owner.
- ``flaskmodel:job:<id>:done`` list: one element pushed when the job reaches a terminal state,
  so a caller can ``BLPOP`` on it (``Prefer: wait``) instead of polling; TTL ``DONE_TTL``.

State changes run as one Lua script each, so a cancel racing a finishing worker leaves exactly
one winner, and a terminal state is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import redis
from redis.client import Pipeline

from flaskmodel.errors import Conflict, InvalidRequest, JobNotFound, Overloaded
from flaskmodel.jobs.admission import Admission
from flaskmodel.jobs.scripts import ADVANCE, START_CHUNK, TRANSITION
from flaskmodel.schemas import ExportState, JobError, JobRequest, JobState, JobView, Progress
from flaskmodel.storage.pipelines import execute, queue_script
from flaskmodel.storage.redis import key

logger = logging.getLogger(__name__)

# A waiter arrives within its request's lifetime; the notice need not outlive that by much.
DONE_TTL = 600

ACTIVE = f"{JobState.QUEUED},{JobState.RUNNING}"

#: Prefix of the job hash fields holding one export's state each.
EXPORT_FIELD = "export:"

# Sorted set of job ids by creation time (the jobs listing and the results viewer).
RECENT = key("jobs")
RECENT_KEEP = 10_000


def start_reply(reply: list[Any]) -> tuple[str, JobState | None, int]:
    """(verdict, state found, attempt) from the reply of ``JobStore.start_in``."""
    verdict, state, attempt = reply
    return str(verdict), JobState(state) if state else None, int(attempt)


def done_key(job_id: str) -> str:
    """The list a job's end is announced on (``BLPOP`` it to wait without polling)."""
    return key("job", job_id, "done")


def owner_index(owner: str) -> str:
    """The sorted set of one API key's jobs by creation time."""
    return key("jobs", "owner", owner)


def _owned(recorded: str | None, owner: str | None) -> bool:
    return owner is None or recorded == owner


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def request_digest(request: JobRequest) -> str:
    body = request.model_dump_json(exclude_none=True)
    return hashlib.sha256(body.encode()).hexdigest()


class JobStore:
    """Creates, reads and moves job records."""

    def __init__(self, client: redis.Redis, *, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl
        self._transition = client.register_script(TRANSITION)
        self._start_chunk = client.register_script(START_CHUNK)
        self._advance = client.register_script(ADVANCE)

    def create(
        self,
        request: JobRequest,
        *,
        idempotency_key: str | None = None,
        owner: str | None = None,
        version: int | None = None,
        admission: Admission | None = None,
    ) -> tuple[str, bool, int]:
        """A new QUEUED job's id, True and its model's unfinished jobs counting it (0 without
        ``admission``), or an existing job's id, False and 0 (same idempotency key).

        ``version``: the version the job is pinned to (default: the request's). ``admission``:
        count the new job against its model's bound in the same round trip; past the bound the
        record is written all the same and ``Overloaded`` raised (the caller removes it)."""
        job_id = uuid.uuid4().hex
        digest = request_digest(request)
        if idempotency_key is not None:
            if not 1 <= len(idempotency_key) <= 255 or not idempotency_key.isprintable():
                raise InvalidRequest("Idempotency-Key must be 1-255 printable characters")
            scoped = idempotency_key if owner is None else f"{owner}\n{idempotency_key}"
            idem = key("idem", hashlib.sha256(scoped.encode()).hexdigest())
            if not self._redis.set(idem, job_id, nx=True, ex=self._ttl):
                existing = self._redis.get(idem)
                stored = self._redis.hget(key("job", str(existing)), "digest") if existing else None
                if existing and stored is not None:
                    if stored != digest:
                        raise Conflict("Idempotency-Key was already used for a different request")
                    return str(existing), False, 0
                self._redis.set(idem, job_id, ex=self._ttl)
        fields: dict[Any, Any] = {
            "state": JobState.QUEUED.value,
            "kind": request.kind,
            "model": request.model,
            "request": request.model_dump_json(exclude_none=True),
            "digest": digest,
            "created_at": now(),
            "done": 0,
            "total": 0,
            "attempts": 0,
        }
        if version is None:
            version = request.version
        if version is not None:
            fields["version"] = version
        if request.series_uid is not None:
            fields["series_uid"] = request.series_uid
        if owner is not None:
            fields["owner"] = owner
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(key("job", job_id), mapping=fields)
        pipe.expire(key("job", job_id), self._ttl)
        pipe.zadd(RECENT, {job_id: time.time()})
        pipe.zremrangebyrank(RECENT, 0, -RECENT_KEEP - 1)
        pipe.expire(RECENT, self._ttl)
        if owner is not None:
            mine = owner_index(owner)
            pipe.zadd(mine, {job_id: time.time()})
            pipe.zremrangebyrank(mine, 0, -RECENT_KEEP - 1)
            pipe.expire(mine, self._ttl)
        if admission is not None:
            admission.admit_in(pipe, request.model, job_id)
            replies = admission.execute(pipe)
        else:
            replies = pipe.execute()
        depth = 0
        if admission is not None:
            try:
                depth = admission.check(request.model, replies[-1])
            except Overloaded:
                self.delete(job_id)  # refused: the client gets no id for it
                raise
        return job_id, True, depth

    def delete(self, job_id: str) -> None:
        """Forget a job whose enqueue failed (the client got an error, not a job id)."""
        self._redis.delete(key("job", job_id))

    def get(self, job_id: str, owner: str | None = None, *, woken_by: str | None = None) -> JobView:
        """The job; with ``owner``, a job of another owner is not found. ``woken_by``: the end
        notice a waiter popped from the job's done list, put back (in the same round trip) so
        that every other waiter on the job wakes too."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(key("job", job_id))
        pipe.get(key("result", job_id))
        if woken_by is not None:
            pipe.lpush(done_key(job_id), woken_by)
            pipe.expire(done_key(job_id), min(DONE_TTL, self._ttl))
        record, result, *_ = pipe.execute()
        if not record or not _owned(record.get("owner"), owner):
            raise JobNotFound(f"job '{job_id}' not found (unknown or expired)")
        return self._view(job_id, record, result)

    def check_owner(self, job_id: str, owner: str | None) -> None:
        """Raise JobNotFound unless the job exists and (given ``owner``) belongs to it."""
        if owner is None:
            return
        found = self._redis.hget(key("job", job_id), "owner")
        if not _owned(None if found is None else str(found), owner):
            raise JobNotFound(f"job '{job_id}' not found (unknown or expired)")

    def recent(self, limit: int, owner: str | None = None) -> list[JobView]:
        """The newest ``limit`` jobs still on record (of ``owner``, when given), newest first,
        without their results."""
        index = RECENT if owner is None else owner_index(owner)
        ids = [str(i) for i in self._redis.zrevrange(index, 0, max(0, limit - 1))]
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(key("job", job_id))
        views = []
        for job_id, record in zip(ids, pipe.execute(), strict=True):
            if record:
                views.append(self._view(job_id, record, None))
            else:  # expired: forget it
                self._redis.zrem(index, job_id)
        return views

    @staticmethod
    def _view(job_id: str, record: dict[str, str], result: str | None) -> JobView:
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
        )

    def request(self, job_id: str) -> JobRequest:
        raw = self._redis.hget(key("job", job_id), "request")
        if raw is None:
            raise JobNotFound(f"job '{job_id}' not found (unknown or expired)")
        return JobRequest.model_validate_json(raw)

    def state(self, job_id: str) -> JobState | None:
        raw = self._redis.hget(key("job", job_id), "state")
        return JobState(str(raw)) if raw else None

    def running_for(self, job_id: str) -> float | None:
        """Seconds since the job's current delivery (of its current chunk) started; None when it
        has not started."""
        record = key("job", job_id)
        started = self._redis.hget(record, "delivered_at") or self._redis.hget(record, "started_at")
        if not started:
            return None
        return time.time() - datetime.fromisoformat(str(started)).timestamp()

    def start(self, job_id: str) -> tuple[JobState | None, int]:
        """Mark RUNNING (again, after a redelivery); returns the state found and the attempt."""
        at = now()
        found = self._move(job_id, ACTIVE, JobState.RUNNING, started_at=at, delivered_at=at)
        if found is None or found.terminal:
            return found, 0
        return found, int(self._redis.hincrby(key("job", job_id), "attempts", 1))

    def start_chunk(
        self, job_id: str, chunk: int, worker: str = ""
    ) -> tuple[str, JobState | None, int]:
        """A delivery of ``chunk`` to ``worker`` (``host:pid``, kept in the record): (verdict,
        state found, attempt); see ``scripts.START_CHUNK``."""
        return start_reply(
            self._start_chunk(keys=[key("job", job_id)], args=self._start_args(chunk, worker))
        )

    def _start_args(self, chunk: int, worker: str) -> list[Any]:
        return [chunk, now(), self._ttl, worker]

    def start_in(self, pipe: Pipeline, job_id: str, chunk: int = 0, worker: str = "") -> None:
        """Queue ``start_chunk`` on ``pipe`` (run it with ``execute(pipe)``; pass its reply to
        ``start_reply``)."""
        queue_script(pipe, self._start_chunk, [key("job", job_id)], self._start_args(chunk, worker))

    def execute(self, pipe: Pipeline) -> list[Any]:
        """Run a pipeline holding this store's script calls (``start_in``, ``move_in``)."""
        return execute(pipe, self._start_chunk, self._transition)

    def advance(self, job_id: str, chunk: int) -> bool:
        """Move the job from ``chunk`` to the next; False when another delivery already did."""
        return bool(self._advance(keys=[key("job", job_id)], args=[chunk]))

    def handed_over(self, job_id: str) -> None:
        """The next chunk's message is published: the hand-over is complete."""
        self._redis.hdel(key("job", job_id), "handover")

    def set_progress(self, job_id: str, done: int, total: int) -> None:
        self._redis.hset(key("job", job_id), mapping={"done": done, "total": total})

    def exports(self, job_id: str) -> list[ExportState]:
        """Where the job's DICOM SR goes and how far each export got (request order)."""
        record = self._redis.hgetall(key("job", job_id))
        return _exports({str(k): str(v) for k, v in record.items()}) or []

    def set_export(self, job_id: str, export: ExportState) -> None:
        """Record one export's state (one field per destination: concurrent writers of other
        destinations never lose each other's updates)."""
        self._redis.hset(
            key("job", job_id), f"{EXPORT_FIELD}{export.destination}", export.model_dump_json()
        )

    def set_version(self, job_id: str, version: int) -> None:
        self._redis.hset(key("job", job_id), "version", version)

    def succeed(self, job_id: str, result: dict[str, Any]) -> bool:
        """Store the result and mark SUCCEEDED; False when the job was cancelled meanwhile."""
        raw = json.dumps(result, separators=(",", ":"), allow_nan=False)
        found = self._move(job_id, ACTIVE, JobState.SUCCEEDED, result=raw, finished_at=now())
        return found in (JobState.QUEUED, JobState.RUNNING)

    def fail(self, job_id: str, error_type: str, message: str) -> bool:
        found = self._move(
            job_id,
            ACTIVE,
            JobState.FAILED,
            finished_at=now(),
            error_type=error_type,
            error_message=message,
        )
        return found in (JobState.QUEUED, JobState.RUNNING)

    def cancel(self, job_id: str) -> JobView:
        found = self._move(job_id, ACTIVE, JobState.CANCELLED, finished_at=now())
        if found is None:
            raise JobNotFound(f"job '{job_id}' not found (unknown or expired)")
        if found not in (JobState.QUEUED, JobState.RUNNING):
            raise Conflict(f"job '{job_id}' already finished ({found.value}); nothing to cancel")
        return self.get(job_id)

    def _move(
        self, job_id: str, allowed: str, new: JobState, *, result: str = "", **fields: Any
    ) -> JobState | None:
        keys, args = self._move_args(job_id, allowed, new, result, fields)
        found = self._transition(keys=keys, args=args)
        return JobState(found) if found else None

    def move_in(
        self,
        pipe: Pipeline,
        job_id: str,
        allowed: str,
        new: JobState,
        *,
        result: str = "",
        **fields: Any,
    ) -> None:
        """Queue one state transition on ``pipe`` (run it with ``execute(pipe)``; its reply is
        the state found, or None for no record)."""
        queue_script(pipe, self._transition, *self._move_args(job_id, allowed, new, result, fields))

    def _move_args(
        self, job_id: str, allowed: str, new: JobState, result: str, fields: dict[str, Any]
    ) -> tuple[list[str], list[Any]]:
        args: list[Any] = [allowed, new.value, self._ttl, result, min(DONE_TTL, self._ttl)]
        for name, value in fields.items():
            args.extend([name, value])
        return [key("job", job_id), key("result", job_id), done_key(job_id)], args


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
