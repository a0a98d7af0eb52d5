"""``JobSubmitter``: admits a job request, records it, and publishes it to the workers.

Checks first what the web tier can know without TensorFlow (from the ``ModelCatalog``): that a
live worker serves the model (503 otherwise, never a job that waits forever), that the version
exists, and for tensor jobs that
the inputs match the signature the workers advertise (400). Then admission control counts the
job against its model's bound of unfinished jobs (429 + Retry-After past it; ``Admission``). A
publish that fails (broker down) removes the record again and answers 503, so a client never holds
the id of a job that was lost.
"""

from __future__ import annotations

import logging

import redis
from celery import Celery
from kombu.exceptions import OperationalError
from redis import RedisError

from flaskmodel.codecs.tfserving_json import decode_inputs
from flaskmodel.errors import InvalidRequest, ModelNotFound, ServiceUnavailable
from flaskmodel.jobs.admission import Admission
from flaskmodel.jobs.broker import publish_job, publish_jobs
from flaskmodel.jobs.publisher import JobPublisher
from flaskmodel.jobs.store import JobStore
from flaskmodel.logs import set_job_id
from flaskmodel.metrics import catalogue
from flaskmodel.metrics.recorder import RECORDER
from flaskmodel.schemas import JobRequest, JobView
from flaskmodel.settings import DicomSettings, Settings
from flaskmodel.storage.catalog import ModelCatalog
from flaskmodel.storage.workers import WorkerRegistry

logger = logging.getLogger(__name__)


class JobSubmitter:
    """Validates, records and enqueues jobs."""

    def __init__(
        self,
        jobs: JobStore,
        catalog: ModelCatalog,
        celery: Celery,
        *,
        queue: str,
        admission: Admission | None = None,
        default_priority: int = 5,
        max_jobs_per_message: int = 1,
        publish_window: float = 0.0,
        dicom: DicomSettings | None = None,
    ) -> None:
        self._jobs = jobs
        self._dicom = dicom or DicomSettings()
        self._catalog = catalog
        self._celery = celery
        self._queue = queue
        self._admission = admission  # None: no bound (unit tests of the other checks)
        self._default_priority = default_priority
        self._publisher = JobPublisher(
            self._publish_tensor_jobs, max_jobs=max_jobs_per_message, window=publish_window
        )

    def _publish_tensor_jobs(self, job_ids: list[str], model: str, priority: int) -> None:
        if len(job_ids) == 1:
            publish_job(self._celery, job_ids[0], model, queue=self._queue, priority=priority)
        else:
            publish_jobs(self._celery, job_ids, model, queue=self._queue, priority=priority)

    def submit(
        self, request: JobRequest, *, idempotency_key: str | None, owner: str | None = None
    ) -> tuple[str, bool]:
        """The job id, and True when it was created now (False: an idempotent repeat).
        ``owner``: the API key id the job is recorded under (None: authentication off)."""
        self._check_endpoints(request)
        # A snapshot of the adverts up to 0.1 s old when it has the model (``JOB_MAX_AGE``).
        advert = self._catalog.model(request.model, request.version)
        version = request.version or advert.latest
        if version not in advert.specs:
            raise ModelNotFound(
                f"model '{request.model}' has no version {version} (has {advert.versions})"
            )
        if request.inputs is not None:
            decode_inputs(request.inputs, advert.specs[version])
        # Pinned to the cluster's default now: every live worker has it warm (issue 8 §3).
        job_id, created, depth = self._jobs.create(
            request,
            idempotency_key=idempotency_key,
            owner=owner,
            version=version,
            admission=self._admission,
        )
        if not created:
            return job_id, False
        set_job_id(job_id)
        # Logged before the publish: a worker may start the job the moment it is published.
        logger.info("job submitted: model %s version %s, %s", request.model, version, request.kind)
        priority = request.priority or self._default_priority
        try:
            if request.kind == "tensor":
                # Other jobs of the model unfinished: this one may wait briefly for company.
                self._publisher.publish(job_id, request.model, priority, crowded=depth > 1)
            else:
                publish_job(
                    self._celery, job_id, request.model, queue=self._queue, priority=priority
                )
        except (OperationalError, RedisError, OSError) as exc:
            logger.warning("publish of job %s failed: %s", job_id, exc)
            self._forget(request.model, job_id)
            raise ServiceUnavailable(
                "the job queue is unavailable; try again shortly", retry_after=2
            ) from exc
        RECORDER.inc(catalogue.JOBS_SUBMITTED, (request.model, request.kind))
        return job_id, True

    def _check_endpoints(self, request: JobRequest) -> None:
        """A series job's DICOMweb source and export destinations are configured ones."""
        if request.source is not None and request.source not in self._dicom.sources:
            known = ", ".join(sorted(self._dicom.sources)) or "none"
            raise InvalidRequest(
                f"unknown DICOMweb source '{request.source}' (dicom.sources: {known})"
            )
        unknown = [n for n in request.exports or [] if n not in self._dicom.destinations]
        if unknown:
            known = ", ".join(sorted(self._dicom.destinations)) or "none"
            raise InvalidRequest(
                f"unknown export destination '{unknown[0]}' (dicom.destinations: {known})"
            )

    def cancel(self, job_id: str, owner: str | None = None) -> JobView:
        """Cancel a queued or running job; it stops counting against its model's bound.
        With ``owner``, another owner's job is not found."""
        self._jobs.check_owner(job_id, owner)
        view = self._jobs.cancel(job_id)
        RECORDER.inc(catalogue.JOBS_FINISHED, (view.model, view.kind, view.state.value))
        logger.info("job cancelled")
        if self._admission is not None:
            self._admission.release(view.model, job_id)
        return view

    def _forget(self, model: str, job_id: str) -> None:
        """Remove a job the client will not get an id for (refused or not published)."""
        try:
            if self._admission is not None:
                self._admission.release(model, job_id, ended=False)
            self._jobs.delete(job_id)
        except RedisError:
            logger.warning("could not remove unpublished job %s", job_id)


def build_catalog(settings: Settings, client: redis.Redis) -> ModelCatalog:
    """The process's one cache of the workers' model adverts."""
    return ModelCatalog(WorkerRegistry(client, ttl=settings.worker.heartbeat_seconds * 3))


def build_submitter(
    settings: Settings,
    client: redis.Redis,
    celery: Celery,
    *,
    jobs: JobStore | None = None,
    catalog: ModelCatalog | None = None,
) -> JobSubmitter:
    """The submitter a process that takes jobs uses (the web tier, the DICOM front door), wired
    from settings: the job store and model catalog (given, when the process shares them with
    other services), admission bound and tensor-job publisher."""
    return JobSubmitter(
        jobs or JobStore(client, ttl=settings.jobs.ttl_seconds),
        catalog or build_catalog(settings, client),
        celery,
        queue=settings.worker.queue,
        admission=Admission(
            client, max_pending=settings.jobs.max_pending, ttl=settings.jobs.ttl_seconds
        ),
        default_priority=settings.jobs.default_priority,
        max_jobs_per_message=settings.jobs.max_jobs_per_message,
        publish_window=settings.jobs.publish_window_ms / 1000,
        dicom=settings.dicom,
    )
