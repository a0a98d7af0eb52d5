"""``JobStore``: job records created at submit time and moved through their states atomically.
The only writer of the job keys (``keys``); reads are ``JobRecords``, which it extends.

Keys (all with the job TTL):

- ``flaskmodel:job:<id>`` hash: state, kind, model, version, series_uid, request (JSON), digest,
  owner, created_at/started_at/finished_at, done/total, error_type/error_message;
  delivered_at and worker (the current delivery and the worker running it, JSON ``JobWorker``:
  Celery node, host, pid), attempts (deliveries of the current chunk), attempts_history (JSON
  list of ``JobAttempt``: the last ``scripts.HISTORY_KEEP`` deliveries, who started each when and
  how it ended), chunk/handover (series jobs run as a sequence of chunk tasks), the ledger
  (``completions``: executions that reached the result write; ``result_writes``: writes that took
  effect), and ``export:<destination>`` (JSON ``ExportState``) per destination a series job's
  DICOM SR goes to.
- ``flaskmodel:result:<id>`` string: the result document (JSON).
- ``flaskmodel:idem:<key>`` string: the job id an ``Idempotency-Key`` made.
- ``flaskmodel:jobs`` sorted set: the newest job ids by creation time (at most ``RECENT_KEEP``).
- ``flaskmodel:jobs:owner:<key id>`` sorted set: the same per API key, when authentication is on.
- ``flaskmodel:job:<id>:done`` list: one element pushed when the job reaches a terminal state,
  so a caller can ``BLPOP`` on it (``Prefer: wait``) instead of polling; TTL ``DONE_TTL``.

Ownership: with authentication on, a job records the id of the API key that created it
(``owner``; never the key). Reads given an ``owner`` treat another key's job as unknown (404,
not 403: its existence is not revealed), and idempotency keys are scoped per owner.

State changes run as one Lua script each (``scripts``), so a cancel racing a finishing worker
leaves exactly one winner, and a terminal state is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
from typing import Any

import redis
from redis.client import Pipeline

from flaskmodel.errors import Conflict, InvalidRequest, JobNotFound, Overloaded
from flaskmodel.jobs.admission import Admission
from flaskmodel.jobs.keys import (
    RECENT,
    done_key,
    idem_key,
    owner_index,
    record_key,
    result_key,
)
from flaskmodel.jobs.records import DONE_TTL, EXPORT_FIELD, JobRecords, now
from flaskmodel.jobs.scripts import ADVANCE, HISTORY_KEEP, START_CHUNK, TRANSITION
from flaskmodel.schemas import ExportState, JobRequest, JobState, JobView, JobWorker
from flaskmodel.storage.pipelines import execute, queue_script

# ``DONE_TTL``, ``done_key`` and ``now`` are ``records``' and ``keys``', re-exported for callers.
__all__ = [
    "ACTIVE",
    "DONE_TTL",
    "RECENT_KEEP",
    "JobStore",
    "done_key",
    "now",
    "request_digest",
    "start_reply",
    "this_process",
]

ACTIVE = f"{JobState.QUEUED},{JobState.RUNNING}"

RECENT_KEEP = 10_000


def start_reply(reply: list[Any]) -> tuple[str, JobState | None, int]:
    """(verdict, state found, attempt) from the reply of ``JobStore.start_in``."""
    verdict, state, attempt = reply
    return str(verdict), JobState(state) if state else None, int(attempt)


def request_digest(request: JobRequest) -> str:
    body = request.model_dump_json(exclude_none=True)
    return hashlib.sha256(body.encode()).hexdigest()


def this_process(node: str = "") -> JobWorker:
    """This process as the worker of a delivery (``node``: its Celery node name)."""
    return JobWorker(node=node, host=socket.gethostname(), pid=os.getpid())


class JobStore(JobRecords):
    """Creates, reads and moves job records."""

    def __init__(self, client: redis.Redis, *, ttl: int) -> None:
        super().__init__(client, done_ttl=min(DONE_TTL, ttl))
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
            idem = idem_key(idempotency_key if owner is None else f"{owner}\n{idempotency_key}")
            if not self._redis.set(idem, job_id, nx=True, ex=self._ttl):
                existing = self._redis.get(idem)
                stored = self._redis.hget(record_key(str(existing)), "digest") if existing else None
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
        for name in request.exports or []:  # the job shows every export it will make, PENDING
            fields[f"{EXPORT_FIELD}{name}"] = ExportState(destination=name).model_dump_json()
        if owner is not None:
            fields["owner"] = owner
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(record_key(job_id), mapping=fields)
        pipe.expire(record_key(job_id), self._ttl)
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
        self._redis.delete(record_key(job_id))

    def start(self, job_id: str, worker: JobWorker | None = None) -> tuple[JobState | None, int]:
        """Mark RUNNING (again, after a redelivery) as a delivery of the job's current chunk;
        the state found and the attempt (0 when the job has ended or is unknown)."""
        chunk = self._redis.hget(record_key(job_id), "chunk")
        verdict, found, attempt = self.start_chunk(job_id, int(chunk or 0), worker)
        return found, attempt if verdict == "run" else 0

    def start_chunk(
        self, job_id: str, chunk: int, worker: JobWorker | None = None
    ) -> tuple[str, JobState | None, int]:
        """A delivery of ``chunk`` to ``worker`` (default: this process; kept in the record and
        its attempts history): (verdict, state found, attempt); see ``scripts.START_CHUNK``."""
        return start_reply(
            self._start_chunk(keys=[record_key(job_id)], args=self._start_args(chunk, worker))
        )

    def _start_args(self, chunk: int, worker: JobWorker | None) -> list[Any]:
        who = (worker or this_process()).model_dump_json()
        return [chunk, now(), self._ttl, who, HISTORY_KEEP]

    def start_in(
        self, pipe: Pipeline, job_id: str, chunk: int = 0, worker: JobWorker | None = None
    ) -> None:
        """Queue ``start_chunk`` on ``pipe`` (run it with ``execute(pipe)``; pass its reply to
        ``start_reply``)."""
        queue_script(pipe, self._start_chunk, [record_key(job_id)], self._start_args(chunk, worker))

    def execute(self, pipe: Pipeline) -> list[Any]:
        """Run a pipeline holding this store's script calls (``start_in``, ``move_in``)."""
        return execute(pipe, self._start_chunk, self._transition)

    def advance(self, job_id: str, chunk: int) -> bool:
        """Move the job from ``chunk`` to the next; False when another delivery already did."""
        return bool(self._advance(keys=[record_key(job_id)], args=[chunk, now()]))

    def handed_over(self, job_id: str) -> None:
        """The next chunk's message is published: the hand-over is complete."""
        self._redis.hdel(record_key(job_id), "handover")

    def set_progress(self, job_id: str, done: int, total: int) -> None:
        self._redis.hset(record_key(job_id), mapping={"done": done, "total": total})

    def set_export(self, job_id: str, export: ExportState) -> None:
        """Record one export's state (one field per destination: concurrent writers of other
        destinations never lose each other's updates)."""
        self._redis.hset(
            record_key(job_id), f"{EXPORT_FIELD}{export.destination}", export.model_dump_json()
        )

    def set_version(self, job_id: str, version: int) -> None:
        self._redis.hset(record_key(job_id), "version", version)

    def completed(self, job_id: str) -> None:
        """Count an execution that reached its result write (the ``completions`` ledger)."""
        pipe = self._redis.pipeline(transaction=True)
        self.completed_in(pipe, job_id)
        pipe.execute()

    def completed_in(self, pipe: Pipeline, job_id: str) -> None:
        """Queue ``completed`` on ``pipe``."""
        pipe.hincrby(record_key(job_id), "completions", 1)
        pipe.expire(record_key(job_id), self._ttl)

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
        args: list[Any] = [allowed, new.value, self._ttl, result, self._done_ttl]
        for name, value in fields.items():
            args.extend([name, value])
        return [record_key(job_id), result_key(job_id), done_key(job_id)], args
