"""``JobRunner``: runs one job end to end in a worker process (the service behind the task).

Idempotent under redelivery: a job found CANCELLED or finished is skipped, the attempt counter
bounds how often a job that kills its worker is retried, and results are written with one atomic
state transition. A Redis error is not the job's fault: it propagates (the task requeues the
message) instead of failing the job. The job record keeps a ledger of what executions did:
``completions`` counts executions that reached the result write, ``result_writes`` the writes that
took effect (never more than one). A job that ends leaves its model's admission bound.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded

from flaskmodel.admission import Admission
from flaskmodel.errors import FlaskModelError
from flaskmodel.jobs import JobStore
from flaskmodel.metrics import catalogue
from flaskmodel.metrics.recorder import RECORDER
from flaskmodel.runtime.repository import ModelRepository
from flaskmodel.schemas import JobRequest, JobState
from flaskmodel.settings import Settings
from flaskmodel.storage.redis import key
from flaskmodel.tensors import decode_inputs, encode_outputs

logger = logging.getLogger(__name__)


class JobRunner:
    """Executes tensor and series jobs against the process's model repository."""

    def __init__(
        self, settings: Settings, jobs: JobStore, repository: ModelRepository, client: redis.Redis
    ) -> None:
        self._settings = settings
        self._jobs = jobs
        self._repository = repository
        self._redis = client
        self._admission = Admission(
            client, max_pending=settings.jobs.max_pending, ttl=settings.jobs.ttl_seconds
        )

    def run(self, job_id: str) -> None:
        """Run the job if it still needs running; raises only ``redis.RedisError``."""
        self._run(job_id)
        self.settle(job_id)

    def settle(self, job_id: str) -> None:
        """Once the job has ended, take it off its model's admission bound (idempotent)."""
        model = self._redis.hget(key("job", job_id), "model")
        state = self._jobs.state(job_id)
        if model and state is not None and state.terminal:
            self._admission.release(str(model), job_id)

    def _run(self, job_id: str) -> None:
        found, attempt = self._jobs.start(job_id)
        if found is None:
            logger.warning("job %s: no record (expired or unknown); skipped", job_id)
            return
        if found.terminal:
            logger.info("job %s is %s; skipped", job_id, found.value)
            return
        if attempt > self._settings.jobs.max_attempts:
            if self._jobs.fail(
                job_id,
                "worker_lost",
                f"job was delivered {attempt} times and its worker died each time "
                f"(limit {self._settings.jobs.max_attempts})",
            ):
                self.finished(job_id, "FAILED", "worker_lost")
            return
        if found is JobState.RUNNING:
            logger.warning("job %s redelivered (attempt %d)", job_id, attempt)
        waited = self._queue_wait(job_id, attempt)
        started = time.perf_counter()
        try:
            request = self._jobs.request(job_id)
            result = self._execute(job_id, request)
        except FlaskModelError as exc:
            logger.info("job %s failed: %s: %s", job_id, exc.type, exc.message)
            if self._jobs.fail(job_id, exc.type, exc.message):
                self.finished(job_id, "FAILED", exc.type, time.perf_counter() - started)
            return
        except (redis.RedisError, SoftTimeLimitExceeded):
            raise  # the store is down (the message is requeued), or the task's time limit
        except Exception as exc:
            logger.exception("job %s crashed", job_id)
            if self._jobs.fail(job_id, "internal_error", f"{type(exc).__name__}: {exc}"):
                self.finished(job_id, "FAILED", "internal_error", time.perf_counter() - started)
            return
        elapsed = time.perf_counter() - started
        timings = result.setdefault("timings", {})
        if waited is not None:
            timings["queue_wait_seconds"] = round(waited, 6)
        timings["total_seconds"] = round(elapsed, 6)
        self._count(job_id, "completions")
        if not self._jobs.succeed(job_id, result):  # counts result_writes with the write
            logger.info("job %s already ended (cancelled or finished); result dropped", job_id)
            return
        self.finished(job_id, "SUCCEEDED", seconds=elapsed)

    def _queue_wait(self, job_id: str, attempt: int) -> float | None:
        """Seconds between submit and this start (recorded for a first delivery only)."""
        created, started, model = self._redis.hmget(
            key("job", job_id), ["created_at", "started_at", "model"]
        )
        if not created or not started:
            return None
        waited = max(0.0, _epoch(str(started)) - _epoch(str(created)))
        logger.info("job %s started (attempt %d) after %.3f s queued", job_id, attempt, waited)
        if attempt == 1 and model:
            RECORDER.observe(catalogue.JOB_QUEUE_WAIT, (str(model),), waited)
        return waited

    def finished(
        self, job_id: str, state: str, error_type: str | None = None, seconds: float | None = None
    ) -> None:
        """Count a job that this process moved to ``state`` (metrics and a log line)."""
        model, kind = self._redis.hmget(key("job", job_id), ["model", "kind"])
        labels = (str(model or ""), str(kind or ""))
        RECORDER.inc(catalogue.JOBS_FINISHED, (*labels, state))
        if error_type is not None:
            RECORDER.inc(catalogue.ERRORS, (error_type, "job"))
        if seconds is not None:
            RECORDER.observe(catalogue.JOB_DURATION, labels, seconds)
            logger.info("job %s %s in %.3f s", job_id, state, seconds)

    def _count(self, job_id: str, field: str) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hincrby(key("job", job_id), field, 1)
        pipe.expire(key("job", job_id), self._settings.jobs.ttl_seconds)
        pipe.execute()

    def _execute(self, job_id: str, request: JobRequest) -> dict[str, Any]:
        if request.kind == "tensor":
            return self._tensor(job_id, request)
        from flaskmodel.worker.series_job import run_series  # noqa: PLC0415 - pydicom only here

        return run_series(
            job_id, request, self._settings, self._jobs, self._repository, self._redis
        )

    def _tensor(self, job_id: str, request: JobRequest) -> dict[str, Any]:
        assert request.inputs is not None
        # The version the web tier resolved at submit (see JobSubmitter), kept on redelivery.
        pinned = self._jobs.get(job_id).version or request.version
        runtime = self._repository.get(request.model, pinned)
        spec = runtime.spec
        self._jobs.set_version(job_id, spec.version)
        tick = time.perf_counter()
        arrays = decode_inputs(request.inputs, spec)
        decoded = time.perf_counter()
        batch = len(next(iter(arrays.values())))
        self._jobs.set_progress(job_id, 0, batch)
        started = time.perf_counter()
        outputs = runtime.predict(arrays)
        elapsed = time.perf_counter() - started
        self._jobs.set_progress(job_id, batch, batch)
        tock = time.perf_counter()
        body = encode_outputs(outputs, row_format=isinstance(request.inputs, list))
        body.update(
            model_name=spec.name,
            model_version=spec.version,
            timings={
                "decode_seconds": round(decoded - tick, 6),
                "inference_seconds": round(elapsed, 6),
                "postprocess_seconds": round(time.perf_counter() - tock, 6),
            },
        )
        return body


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()
