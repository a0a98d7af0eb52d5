"""``JobSubmitter``: admits a job request, records it, and publishes it to the workers.

Checks first what the web tier can know without TensorFlow: that a live worker serves the model
(503 otherwise, never a job that waits forever), that the version exists, and for tensor jobs that
the inputs match the signature the workers advertise (400). A publish that fails (broker down)
removes the record again and answers 503, so a client never holds the id of a job that was lost.
"""

from __future__ import annotations

import logging

from celery import Celery
from kombu.exceptions import OperationalError
from redis import RedisError

from flaskmodel.errors import ModelNotFound, ServiceUnavailable
from flaskmodel.jobs import JobStore
from flaskmodel.schemas import JobRequest, ModelAdvert
from flaskmodel.storage.workers import WorkerRegistry
from flaskmodel.tensors import decode_inputs
from flaskmodel.worker.celery_app import TASK_RUN_JOB

logger = logging.getLogger(__name__)


class JobSubmitter:
    """Validates, records and enqueues jobs."""

    def __init__(self, jobs: JobStore, workers: WorkerRegistry, celery: Celery, *, queue: str):
        self._jobs = jobs
        self._workers = workers
        self._celery = celery
        self._queue = queue

    def model(self, name: str) -> ModelAdvert:
        """The model as the live workers serve it; 404 if unknown, 503 if no worker is up."""
        advert = self._workers.model(name)
        if advert is not None:
            return advert
        live = self._workers.live()
        if not any(w.ready for w in live):
            raise ServiceUnavailable(
                f"no ready worker serves model '{name}' (workers up: {len(live)})", retry_after=5
            )
        failed = [w.errors[name] for w in live if name in w.errors]
        if failed:
            raise ServiceUnavailable(f"model '{name}' failed to load: {failed[0]}", retry_after=30)
        raise ModelNotFound(f"model '{name}' not found")

    def submit(self, request: JobRequest, *, idempotency_key: str | None) -> tuple[str, bool]:
        """The job id, and True when it was created now (False: an idempotent repeat)."""
        advert = self.model(request.model)
        version = request.version or advert.latest
        if version not in advert.specs:
            raise ModelNotFound(
                f"model '{request.model}' has no version {version} (has {advert.versions})"
            )
        if request.inputs is not None:
            decode_inputs(request.inputs, advert.specs[version])
        job_id, created = self._jobs.create(request, idempotency_key=idempotency_key)
        if created:
            try:
                self._celery.send_task(
                    TASK_RUN_JOB, args=[job_id], task_id=job_id, queue=self._queue
                )
            except (OperationalError, RedisError, OSError) as exc:
                logger.warning("publish of job %s failed: %s", job_id, exc)
                try:
                    self._jobs.delete(job_id)
                except RedisError:
                    logger.warning("could not remove unpublished job %s", job_id)
                raise ServiceUnavailable(
                    "the job queue is unavailable; try again shortly", retry_after=2
                ) from exc
        return job_id, created
