"""Every metric FlaskModel exports: name, kind, help text, labels and histogram buckets.

Names follow Prometheus conventions (``flaskmodel_`` prefix, base units, ``_total`` counters,
``_seconds`` durations). Counters and histograms are recorded by the processes (``recorder``);
gauges are computed from Redis when ``/metrics`` is scraped (``exposition``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "histogram", "gauge"]

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
FAST_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
JOB_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0)
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


HTTP_REQUESTS = Metric(
    "flaskmodel_http_requests_total",
    "counter",
    "HTTP requests answered by the web tier, by route (the URL rule), method and status.",
    ("route", "method", "status"),
)
HTTP_DURATION = Metric(
    "flaskmodel_http_request_duration_seconds",
    "histogram",
    "Time from the request reaching Flask to its response, by route, method and status.",
    ("route", "method", "status"),
    LATENCY_BUCKETS,
)
ERRORS = Metric(
    "flaskmodel_errors_total",
    "counter",
    "Errors by machine-readable type and where they happened (web: error responses; job: "
    "failed jobs; model: failed model batches).",
    ("type", "where"),
)
JOBS_SUBMITTED = Metric(
    "flaskmodel_jobs_submitted_total",
    "counter",
    "Jobs accepted (new, not idempotent repeats), by model and kind (tensor or series).",
    ("model", "kind"),
)
JOBS_FINISHED = Metric(
    "flaskmodel_jobs_finished_total",
    "counter",
    "Jobs that reached a final state, by model, kind and state (SUCCEEDED, FAILED, CANCELLED).",
    ("model", "kind", "state"),
)
JOB_QUEUE_WAIT = Metric(
    "flaskmodel_job_queue_wait_seconds",
    "histogram",
    "Time a job waited between submit and a worker starting it, by model.",
    ("model",),
    JOB_BUCKETS,
)
JOB_DURATION = Metric(
    "flaskmodel_job_duration_seconds",
    "histogram",
    "Time a worker spent running a job (start to result), by model and kind.",
    ("model", "kind"),
    JOB_BUCKETS,
)
BATCH_SIZE = Metric(
    "flaskmodel_batch_size",
    "histogram",
    "Examples per model call made by the dynamic batcher, by model.",
    ("model",),
    BATCH_BUCKETS,
)
BATCH_QUEUE_WAIT = Metric(
    "flaskmodel_batch_queue_wait_seconds",
    "histogram",
    "Time a call waited in a worker's dynamic batcher before its batch ran, by model.",
    ("model",),
    FAST_BUCKETS,
)
INFERENCE_DURATION = Metric(
    "flaskmodel_inference_duration_seconds",
    "histogram",
    "Model latency: time of one model call (one batch), by model and version.",
    ("model", "version"),
    FAST_BUCKETS,
)
SLICE_DECODE = Metric(
    "flaskmodel_series_slice_decode_seconds",
    "histogram",
    "Time to read and decode one DICOM slice to Hounsfield units in a series job, by model.",
    ("model",),
    FAST_BUCKETS,
)
SLICE_PREPROCESS = Metric(
    "flaskmodel_series_slice_preprocess_seconds",
    "histogram",
    "Preprocessing time per slice (window, resize, normalise, thumbnail), by model.",
    ("model",),
    FAST_BUCKETS,
)
RECORDED: tuple[Metric, ...] = (
    HTTP_REQUESTS,
    HTTP_DURATION,
    ERRORS,
    JOBS_SUBMITTED,
    JOBS_FINISHED,
    JOB_QUEUE_WAIT,
    JOB_DURATION,
    BATCH_SIZE,
    BATCH_QUEUE_WAIT,
    INFERENCE_DURATION,
    SLICE_DECODE,
    SLICE_PREPROCESS,
)

# Gauges: computed from Redis at scrape time.
JOBS = Metric(
    "flaskmodel_jobs",
    "gauge",
    "Jobs on record by state (over the newest 10,000 jobs kept in flaskmodel:jobs).",
    ("state",),
)
QUEUE_DEPTH = Metric(
    "flaskmodel_queue_depth",
    "gauge",
    "Messages waiting per model: Celery job queue (queue=jobs) and synchronous request list "
    "(queue=sync).",
    ("model", "queue"),
)
WORKER_READY = Metric(
    "flaskmodel_worker_ready",
    "gauge",
    "1 for each live worker process that has loaded and warmed its models, else 0.",
    ("worker",),
)
WORKERS = Metric(
    "flaskmodel_workers",
    "gauge",
    "Live worker processes by state (ready, loading, draining).",
    ("state",),
)
MODEL_WORKERS = Metric(
    "flaskmodel_model_ready_workers",
    "gauge",
    "Ready worker processes serving each model.",
    ("model",),
)
BATCH_SIZE_LIMIT = Metric(
    "flaskmodel_batch_size_limit",
    "gauge",
    "The most examples a batch of each model version takes in each live worker process, as its "
    "batch-size tuner chose it (absent where batching is not tuned).",
    ("worker", "model", "version"),
)
GAUGES: tuple[Metric, ...] = (
    JOBS,
    QUEUE_DEPTH,
    WORKER_READY,
    WORKERS,
    MODEL_WORKERS,
    BATCH_SIZE_LIMIT,
)

BY_NAME = {m.name: m for m in RECORDED}
