"""Typed request, response and record models shared by the web tier and the workers."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
SERIES_UID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"
#: A DICOM UID (PS3.5 §9): digits in dot-separated components (at most 64 characters: checked
#: with ``max_length`` where a field holds one).
DICOM_UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
#: A name of a DICOMweb source or an export destination in settings.
ENDPOINT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


def _is_dicom_uid(text: str) -> bool:
    return len(text) <= 64 and re.match(DICOM_UID_PATTERN, text) is not None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobState(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class SliceRange(Strict):
    """``[start, stop)`` over the geometrically sorted slices; either end may be left out."""

    start: int | None = Field(default=None, ge=0)
    stop: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _not_empty(self) -> SliceRange:
        if self.start is not None and self.stop is not None and self.stop <= self.start:
            raise ValueError(f"slice range [{self.start}, {self.stop}) is empty")
        return self


class JobRequest(Strict):
    """``POST /v1/jobs``: a tensor job (``inputs``) or a DICOM series job (``series_uid``)."""

    model: str = Field(pattern=MODEL_NAME_PATTERN)
    version: int | None = Field(default=None, ge=1)
    inputs: list[Any] | dict[str, Any] | None = None
    series_uid: str | None = Field(default=None, pattern=SERIES_UID_PATTERN)
    slices: SliceRange | None = None
    postprocess: str | None = None
    priority: int | None = Field(default=None, ge=1, le=10)
    """1 (highest) … 10 (lowest), Triton's convention; orders work within the model's queue."""
    source: str | None = Field(default=None, pattern=ENDPOINT_NAME_PATTERN)
    """Series jobs: the DICOMweb source (``dicom.sources``) the series is pulled from."""
    study_uid: str | None = Field(default=None, pattern=DICOM_UID_PATTERN, max_length=64)
    """Series jobs with a ``source``: the series' StudyInstanceUID (WADO-RS addresses series
    within their study)."""
    exports: list[str] | None = Field(default=None, max_length=16)
    """Series jobs: destinations (``dicom.destinations``) the result goes to as DICOM SR."""

    @model_validator(mode="after")
    def _one_kind(self) -> JobRequest:
        if (self.inputs is None) == (self.series_uid is None):
            raise ValueError(
                "give exactly one of 'inputs' (tensor job) or 'series_uid' (series job)"
            )
        if self.inputs is not None and (self.slices is not None or self.postprocess is not None):
            raise ValueError("'slices' and 'postprocess' apply to series jobs only")
        if isinstance(self.inputs, list) and not self.inputs:
            raise ValueError("'inputs' must hold at least one example")
        if self.inputs is not None and (self.source or self.study_uid or self.exports):
            raise ValueError("'source', 'study_uid' and 'exports' apply to series jobs only")
        if (self.source is None) != (self.study_uid is None):
            raise ValueError("'source' and 'study_uid' go together (WADO-RS needs the study)")
        pulled = self.source is not None and self.series_uid is not None
        if pulled and not _is_dicom_uid(str(self.series_uid)):
            raise ValueError("a series pulled from a source is named by its DICOM UID")
        return self

    @property
    def kind(self) -> Literal["tensor", "series"]:
        return "tensor" if self.inputs is not None else "series"


class Progress(BaseModel):
    done: int = 0
    total: int = 0


class JobError(BaseModel):
    type: str
    message: str


class ExportState(BaseModel):
    """Where a series job's DICOM SR went: ``PENDING`` → ``SENT`` | ``FAILED``."""

    destination: str
    state: Literal["PENDING", "SENT", "FAILED"] = "PENDING"
    attempts: int = 0
    error: str | None = None
    sop_instance_uid: str | None = None
    sent_at: str | None = None


class JobWorker(BaseModel):
    """The worker process a delivery of a job ran on: its Celery node name, host and pid."""

    node: str
    host: str
    pid: int


class JobAttempt(BaseModel):
    """One delivery of a job (of one chunk, for a series job): who started it when, and how it
    ended (``SUCCEEDED``, ``FAILED``, ``CANCELLED``, ``handed_over`` to the next chunk, or
    ``redelivered``: it recorded no end before the next delivery started)."""

    attempt: int
    chunk: int
    worker: JobWorker
    started_at: str
    ended_at: str | None = None
    outcome: str | None = None


class JobView(BaseModel):
    """``GET /v1/jobs/<id>``."""

    job_id: str
    state: JobState
    kind: Literal["tensor", "series"]
    model: str
    version: int | None = None
    series_uid: str | None = None
    progress: Progress
    attempts: int = 0
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    result: dict[str, Any] | None = None
    error: JobError | None = None
    exports: list[ExportState] | None = None
    worker: JobWorker | None = None
    attempts_history: list[JobAttempt] | None = None


class SubmitResponse(BaseModel):
    job_id: str
    state: JobState
    status_url: str


class TensorSpec(BaseModel):
    """One input or output of a signature: numpy dtype name, shape with None for any size.

    ``dtype`` is a numpy dtype name, or ``"string"`` for TensorFlow string tensors (numpy object
    arrays of ``bytes``). ``tensor_name`` is the graph tensor TF Serving's metadata reports.
    """

    name: str
    dtype: str
    shape: list[int | None]
    tensor_name: str | None = None


class ModelSpec(BaseModel):
    """What a loaded model version takes and gives."""

    name: str
    version: int
    signature_name: str = "serving_default"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class BatchStatsView(BaseModel):
    """What one model version's dynamic batcher did in one worker process (since it started).

    ``batch_sizes`` counts model calls by examples per call; ``queue_wait_buckets`` counts
    computed requests by the time they waited for their batch, keyed by the bucket's upper bound
    in seconds (``"+Inf"`` last), not cumulative.
    """

    requests: int = 0
    items: int = 0
    batches: int = 0
    expired: int = 0
    failed_batches: int = 0
    batch_sizes: dict[int, int] = Field(default_factory=dict)
    queue_wait_seconds_sum: float = 0.0
    queue_wait_seconds_max: float = 0.0
    queue_wait_buckets: dict[str, int] = Field(default_factory=dict)
    batch_size_limit: int | None = None
    """The most examples a batch takes now, as the batch-size tuner chose it (None: not tuned)."""


class ModelAdvert(BaseModel):
    """What one worker process serves of one model (published with its heartbeat)."""

    name: str
    versions: list[int]
    latest: int
    specs: dict[int, ModelSpec]
    class_names: list[str] | None = None
    version_labels: dict[str, int] = Field(default_factory=dict)
    stats: dict[int, BatchStatsView] = Field(default_factory=dict)
    # TF Serving's version states: LOADING, AVAILABLE (the versions above), END (unloaded).
    states: dict[int, str] = Field(default_factory=dict)


class WorkerHeartbeat(BaseModel):
    worker_id: str
    hostname: str
    pid: int
    ready: bool
    sent_at: float = 0.0  # epoch seconds of this snapshot (its batch stats are as of then)
    parent_pid: int = 0  # the Celery main process of a pool child (drains it on shutdown)
    draining: bool = False  # its worker is shutting down: finishing in-flight jobs, not ready
    models: dict[str, ModelAdvert] = Field(default_factory=dict)
    errors: dict[str, str] = Field(default_factory=dict)


class SeriesJobRun(BaseModel):
    """One job a received series started (a late instance starts another that supersedes it)."""

    job_id: str
    model: str
    instances: int
    submitted_at: str
    superseded_by: str | None = None


class ReceivedSeries(BaseModel):
    """A series the DICOM front door received (``GET /v1/series/<uid>``).

    ``RECEIVING``: instances arrive (or arrived less than ``dicom.stable_seconds`` ago);
    ``ROUTED``: complete, a job runs or ran (``job_id``); ``STORED``: complete, no routing rule
    matched (kept under the data root); ``ERROR``: a rule matched but the job could not be
    submitted for a reason retrying cannot fix (``error``)."""

    series_uid: str
    study_uid: str | None = None
    state: Literal["RECEIVING", "ROUTED", "STORED", "ERROR"] = "RECEIVING"
    received: int = 0
    duplicates: int = 0
    first_received_at: str
    last_received_at: str
    modality: str | None = None
    body_part_examined: str | None = None
    series_description: str | None = None
    calling_ae_title: str | None = None
    model: str | None = None
    job_id: str | None = None
    jobs: list[SeriesJobRun] = Field(default_factory=list)
    error: str | None = None
    job: JobView | None = None
