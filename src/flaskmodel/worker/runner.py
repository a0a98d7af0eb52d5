"""``JobRunner``: runs one job end to end in a worker process (the service behind the task).

Idempotent under redelivery: a job found CANCELLED or finished is skipped, the attempt counter
bounds how often a job that kills its worker is retried, and results are written with one atomic
state transition. A Redis error is not the job's fault: it propagates (the task requeues the
message) instead of failing the job. The job record keeps a ledger of what executions did:
``completions`` counts executions that reached the result write, ``result_writes`` the writes that
took effect (never more than one). A job that ends leaves its model's admission bound.

Series jobs run as a sequence of chunks (``series.chunk_batches`` batches each): a chunk that
leaves work undone hands the job over to its next chunk, which ``requeue`` publishes at the back
of the model's queue, so concurrent jobs interleave. The record's ``chunk`` says which chunk runs
next; a hand-over is one atomic step (``JobStore.advance``) that only the delivery of the expected
chunk wins, so duplicates of a chunk (redeliveries) never fork the job, and a crash between the
hand-over and the publish is repaired by the redelivered chunk publishing again. Without
``requeue`` (tests, in-process use) the chunks run back to back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.nodenames import default_nodename, host_format

from flaskmodel.codecs.tfserving_json import decode_inputs, encode_outputs
from flaskmodel.errors import FlaskModelError
from flaskmodel.jobs.admission import Admission
from flaskmodel.jobs.store import JobStore, this_process
from flaskmodel.metrics import catalogue
from flaskmodel.metrics.recorder import RECORDER
from flaskmodel.runtime.repository import ModelRepository
from flaskmodel.schemas import JobRequest, JobState, JobWorker
from flaskmodel.settings import Settings
from flaskmodel.worker.job_batch import TensorJobBatch

logger = logging.getLogger(__name__)

# Publishes chunk ``int`` of job ``str`` (whose request is given) to the back of its queue.
Requeue = Callable[[str, JobRequest, int], None]


def this_worker(settings: Settings) -> JobWorker:
    """This process as job records name the worker of a delivery: the Celery node name (as the
    worker expands ``worker.node_name``), host and pid."""
    return this_process(host_format(default_nodename(settings.worker.node_name)))


class JobRunner:
    """Executes tensor and series jobs against the process's model repository."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        repository: ModelRepository,
        client: redis.Redis,
        requeue: Requeue | None = None,
    ) -> None:
        self._settings = settings
        self._requeue = requeue
        self._worker = this_worker(settings)
        self._jobs = jobs
        self._repository = repository
        self._redis = client
        self._admission = Admission(
            client, max_pending=settings.jobs.max_pending, ttl=settings.jobs.ttl_seconds
        )
        self._batch = TensorJobBatch(
            settings, jobs, repository, client, self._admission, self._worker
        )

    def run_many(self, job_ids: list[str]) -> None:
        """Run the tensor jobs of one message together (``TensorJobBatch``)."""
        self._batch.run(job_ids)

    def run(self, job_id: str, chunk: int = 0) -> None:
        """Run (chunk ``chunk`` of) the job if it still needs running; raises only Redis errors
        (and the broker's, when handing over to the next chunk fails)."""
        following = self._run(job_id, chunk)
        while following is not None:
            if self._requeue is not None:
                self._requeue(job_id, self._jobs.request(job_id), following)
                self._jobs.handed_over(job_id)
                break
            self._jobs.handed_over(job_id)
            following = self._run(job_id, following)
        self.settle(job_id)

    def settle(self, job_id: str) -> None:
        """Once the job has ended, take it off its model's admission bound (idempotent)."""
        model = self._jobs.ended_model(job_id)
        if model is not None:
            self._admission.release(model, job_id)

    def _run(self, job_id: str, chunk: int) -> int | None:
        """Run one chunk; returns the chunk to hand over to, if any."""
        verdict, found, attempt = self._jobs.start_chunk(job_id, chunk, self._worker)
        if verdict == "missing":
            logger.warning("job %s: no record (expired or unknown); skipped", job_id)
            return None
        if verdict == "ended":
            assert found is not None
            logger.info("job %s is %s; skipped", job_id, found.value)
            if found is JobState.SUCCEEDED:
                self._export(job_id)  # a worker died while exporting: the rest go now
            return None
        if verdict == "stale":
            logger.info(
                "job %s: chunk %d was already handed over; duplicate skipped", job_id, chunk
            )
            return None
        if verdict == "republish":
            logger.warning(
                "job %s: chunk %d redelivered mid hand-over; publishing again", job_id, chunk
            )
            return chunk + 1
        if attempt > self._settings.jobs.max_attempts:
            if self._jobs.fail(
                job_id,
                "worker_lost",
                f"job was delivered {attempt} times and its worker died each time "
                f"(limit {self._settings.jobs.max_attempts})",
            ):
                self.finished(job_id, "FAILED", "worker_lost")
            return None
        if attempt > 1:
            logger.warning("job %s redelivered (chunk %d, attempt %d)", job_id, chunk, attempt)
        waited = self._queue_wait(job_id, attempt, chunk)
        started = time.perf_counter()
        try:
            request = self._jobs.request(job_id)
            result = self._execute(job_id, request)
            if result is None:  # more chunks to go: hand over unless another delivery did
                return chunk + 1 if self._jobs.advance(job_id, chunk) else None
        except FlaskModelError as exc:
            logger.info("job %s failed: %s: %s", job_id, exc.type, exc.message)
            if self._jobs.fail(job_id, exc.type, exc.message):
                self.finished(job_id, "FAILED", exc.type, time.perf_counter() - started)
            return None
        except (redis.RedisError, SoftTimeLimitExceeded):
            raise  # the store is down (the message is requeued), or the task's time limit
        except Exception as exc:
            logger.exception("job %s crashed", job_id)
            if self._jobs.fail(job_id, "internal_error", f"{type(exc).__name__}: {exc}"):
                self.finished(job_id, "FAILED", "internal_error", time.perf_counter() - started)
            return None
        timings = result.setdefault("timings", {})
        if waited is not None:
            timings.setdefault("queue_wait_seconds", round(waited, 6))
        # A chunked series job's total already sums its chunks.
        timings.setdefault("total_seconds", round(time.perf_counter() - started, 6))
        self._jobs.completed(job_id)
        if not self._jobs.succeed(job_id, result):  # counts result_writes with the write
            logger.info("job %s already ended (cancelled or finished); result dropped", job_id)
            return None
        self.finished(job_id, "SUCCEEDED", seconds=float(timings["total_seconds"]))
        self._export(job_id)
        return None

    def _export(self, job_id: str) -> None:
        """Send a finished series job's DICOM SR where its request says (if anywhere)."""
        request = self._jobs.request(job_id)
        if not request.exports:
            return
        from flaskmodel.worker.exports import SeriesExports  # noqa: PLC0415 - pydicom only here

        SeriesExports(self._settings, self._jobs).run(job_id)

    def _queue_wait(self, job_id: str, attempt: int, chunk: int) -> float | None:
        """Seconds between submit and the job's first start (recorded for the first delivery of
        its first chunk only)."""
        waited, model = self._jobs.queue_wait(job_id)
        if waited is None:
            return None
        if chunk:
            return waited
        logger.info("job %s started (attempt %d) after %.3f s queued", job_id, attempt, waited)
        if attempt == 1 and model:
            RECORDER.observe(catalogue.JOB_QUEUE_WAIT, (model,), waited)
        return waited

    def finished(
        self, job_id: str, state: str, error_type: str | None = None, seconds: float | None = None
    ) -> None:
        """Count a job that this process moved to ``state`` (metrics and a log line)."""
        labels = self._jobs.labels(job_id)
        RECORDER.inc(catalogue.JOBS_FINISHED, (*labels, state))
        if error_type is not None:
            RECORDER.inc(catalogue.ERRORS, (error_type, "job"))
        if seconds is not None:
            RECORDER.observe(catalogue.JOB_DURATION, labels, seconds)
            logger.info("job %s %s in %.3f s", job_id, state, seconds)

    def _execute(self, job_id: str, request: JobRequest) -> dict[str, Any] | None:
        """The job's result, or None when a series job has chunks left."""
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
