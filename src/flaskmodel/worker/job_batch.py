"""``TensorJobBatch``: runs the tensor jobs of one ``run_jobs`` message together.

The web tier puts tensor jobs submitted at the same time into one message (``publisher``). Here
they take three Redis round trips between them, not a dozen each: one pipeline starts every job
(the same atomic ``start_in`` step, attempts counted, as a message of one job), their inputs go
to the model's dynamic batcher at once (one model call for all, up to its batch size), and one
pipeline records every end (the same transition that lets exactly one result write take effect,
the ``completions`` ledger, the admission release).

Redelivery keeps its meaning per job: a message redelivered after a crash skips the jobs that
ended, counts another attempt for the others, and fails one past ``jobs.max_attempts``. A job
whose input or model fails is FAILED alone; the others still succeed. Redis errors propagate (the
task requeues the message).
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from flaskmodel.codecs.tfserving_json import decode_inputs, encode_outputs
from flaskmodel.errors import FlaskModelError
from flaskmodel.jobs.admission import Admission
from flaskmodel.jobs.store import ACTIVE, JobStore, now, start_reply
from flaskmodel.logs import job_context
from flaskmodel.metrics import catalogue
from flaskmodel.metrics.recorder import RECORDER
from flaskmodel.runtime.batcher import DynamicBatcher
from flaskmodel.runtime.repository import ModelRepository
from flaskmodel.schemas import JobRequest, JobState, JobWorker
from flaskmodel.settings import Settings

logger = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]


@dataclass
class _Job:
    """One job of the batch on its way through."""

    job_id: str
    model: str = ""
    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    future: Future[dict[str, np.ndarray]] | None = None
    runtime: DynamicBatcher | None = None
    inputs: dict[str, np.ndarray] | None = None
    shared: bool = False  # its model call carries other jobs too
    request: JobRequest | None = None
    version: int = 0
    rows: int = 0
    result: dict[str, Any] | None = None
    error: tuple[str, str] | None = None  # (type, message) when it failed


class TensorJobBatch:
    """Runs several tensor jobs as one unit of work (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        repository: ModelRepository,
        client: redis.Redis,
        admission: Admission,
        worker: JobWorker,
    ) -> None:
        self._settings = settings
        self._jobs = jobs
        self._repository = repository
        self._redis = client
        self._admission = admission
        self._worker = worker

    def run(self, job_ids: list[str]) -> None:
        """Run every job of the message that still needs running; raises only Redis errors."""
        batch = self._start(job_ids)
        calls: dict[int, tuple[DynamicBatcher, list[_Job], list[Outputs]]] = {}
        for job in batch:
            if job.error is None:
                with job_context(job.job_id):
                    self._decode(job, calls)
        for runtime, jobs, inputs in calls.values():
            try:
                futures = runtime.submit_many(inputs)
            except FlaskModelError as exc:  # the model is shutting down: its jobs fail
                for job in jobs:
                    self._failed(job, exc)
                continue
            for job, future in zip(jobs, futures, strict=True):
                job.future, job.shared = future, len(jobs) > 1
        for job in batch:
            if job.future is not None:
                with job_context(job.job_id):
                    self._collect(job)
        self._finish(batch)

    def _start(self, job_ids: list[str]) -> list[_Job]:
        """Start every job in one round trip; the jobs to run or to fail (others are skipped)."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            self._jobs.start_in(pipe, job_id, 0, self._worker)
            self._jobs.delivery_in(pipe, job_id)
        replies = self._jobs.execute(pipe)
        batch = []
        for job_id, started, fields in zip(job_ids, replies[::2], replies[1::2], strict=True):
            verdict, found, attempt = start_reply(started)
            with job_context(job_id):
                job = self._admit(job_id, verdict, found, attempt, fields)
            if job is not None:
                batch.append(job)
        return batch

    def _admit(
        self,
        job_id: str,
        verdict: str,
        found: JobState | None,
        attempt: int,
        fields: list[Any],
    ) -> _Job | None:
        if verdict != "run":  # no record, ended (cancelled, or done by an earlier delivery)
            logger.info("job %s is %s; skipped", job_id, found.value if found else "gone")
            return None
        job = _Job(job_id)
        delivery = self._jobs.delivery(fields)
        request = delivery.request
        job.request, job.model = request, request.model
        limit = self._settings.jobs.max_attempts
        if attempt > limit:
            job.error = (
                "worker_lost",
                f"job was delivered {attempt} times and its worker died each time (limit {limit})",
            )
            return job
        if attempt > 1:
            logger.warning("job %s redelivered (attempt %d)", job_id, attempt)
        job.timings["queue_wait_seconds"] = round(delivery.queue_wait, 6)
        if attempt == 1:
            RECORDER.observe(catalogue.JOB_QUEUE_WAIT, (job.model,), delivery.queue_wait)
        job.version = delivery.version or request.version or 0
        return job

    def _decode(
        self, job: _Job, calls: dict[int, tuple[DynamicBatcher, list[_Job], list[Outputs]]]
    ) -> None:
        """Decode the job's inputs into the calls of its model version (one ``submit_many``
        each)."""
        assert job.request is not None
        try:
            if job.request.inputs is None:
                raise FlaskModelError("a series job cannot run in a batch of tensor jobs")
            runtime = self._repository.get(job.model, job.version or None)
            job.version = runtime.spec.version
            tick = time.perf_counter()
            arrays = decode_inputs(job.request.inputs, runtime.spec)
            job.rows = len(next(iter(arrays.values())))
            job.timings["decode_seconds"] = round(time.perf_counter() - tick, 6)
            job.timings["inference_seconds"] = time.perf_counter()  # until the result comes
            job.runtime, job.inputs = runtime, arrays
            _, jobs, inputs = calls.setdefault(id(runtime), (runtime, [], []))
            jobs.append(job)
            inputs.append(arrays)
        except redis.RedisError:
            raise
        except Exception as exc:  # noqa: BLE001 - the job fails with it (logged), not the batch
            self._failed(job, exc)

    def _collect(self, job: _Job) -> None:
        """Wait for the job's outputs and build its result document."""
        assert job.future is not None and job.request is not None
        try:
            try:
                outputs = job.future.result()
            except FlaskModelError:
                raise
            except Exception:
                if not job.shared:
                    raise
                # The call failed for every job in it: each runs alone, so that only the job
                # whose input the model fails on fails.
                assert job.runtime is not None and job.inputs is not None
                outputs = job.runtime.submit_many([job.inputs])[0].result()
        except Exception as exc:  # noqa: BLE001 - the job fails with it (logged), not the batch
            self._failed(job, exc)
            return
        tock = time.perf_counter()
        job.timings["inference_seconds"] = round(tock - job.timings["inference_seconds"], 6)
        body = encode_outputs(outputs, row_format=isinstance(job.request.inputs, list))
        job.timings["postprocess_seconds"] = round(time.perf_counter() - tock, 6)
        job.timings["total_seconds"] = round(time.perf_counter() - job.started, 6)
        body.update(model_name=job.model, model_version=job.version, timings=job.timings)
        job.result = body

    @staticmethod
    def _failed(job: _Job, exc: Exception) -> None:
        if isinstance(exc, FlaskModelError):
            logger.info("job %s failed: %s: %s", job.job_id, exc.type, exc.message)
            job.error = (exc.type, exc.message)
        else:
            logger.error("job %s crashed", job.job_id, exc_info=exc)
            job.error = ("internal_error", f"{type(exc).__name__}: {exc}")

    def _finish(self, batch: list[_Job]) -> None:
        """Record every end in one round trip, then count the ends this delivery made."""
        if not batch:
            return
        pipe = self._redis.pipeline(transaction=False)
        transitions = []  # where each job's transition reply is in the pipeline's replies
        for job in batch:
            if job.result is not None:
                self._jobs.completed_in(pipe, job.job_id)
                transitions.append(len(pipe))
                self._jobs.move_in(
                    pipe, job.job_id, ACTIVE, JobState.SUCCEEDED, result=_dumps(job.result),
                    finished_at=now(), version=job.version, done=job.rows, total=job.rows,
                )  # fmt: skip
            else:
                assert job.error is not None
                transitions.append(len(pipe))
                self._jobs.move_in(
                    pipe, job.job_id, ACTIVE, JobState.FAILED, finished_at=now(),
                    error_type=job.error[0], error_message=job.error[1],
                )  # fmt: skip
            self._admission.release_in(pipe, job.model, job.job_id)
        replies = self._jobs.execute(pipe)
        for job, at in zip(batch, transitions, strict=True):
            with job_context(job.job_id):
                self._count(job, replies[at] in (JobState.QUEUED.value, JobState.RUNNING.value))

    @staticmethod
    def _count(job: _Job, won: bool) -> None:
        if not won:
            logger.info("job %s already ended (cancelled or finished); result dropped", job.job_id)
            return
        kind = "tensor"
        state = JobState.SUCCEEDED.value if job.result is not None else JobState.FAILED.value
        RECORDER.inc(catalogue.JOBS_FINISHED, (job.model, kind, state))
        if job.error is not None:
            RECORDER.inc(catalogue.ERRORS, (job.error[0], "job"))
        seconds = time.perf_counter() - job.started
        RECORDER.observe(catalogue.JOB_DURATION, (job.model, kind), seconds)
        logger.info("job %s %s in %.3f s", job.job_id, state, seconds)


def _dumps(result: dict[str, Any]) -> str:
    return json.dumps(result, separators=(",", ":"), allow_nan=False)
