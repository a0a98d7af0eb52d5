"""The sections of ``Settings``, one pydantic model per concern: each field is set by
``FLASKMODEL_<SECTION>__<FIELD>``."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class RedisSettings(Section):
    url: str | None = None
    """Redis URL (`redis://host:port/db` or `unix:///path.sock`; with `sentinel_master`, the
    Sentinels: `sentinel://host1:26379;sentinel://host2:26379/db`). Empty: `flaskmodel up` starts
    its own redis-server; `serve` and `worker` refuse to start."""
    sentinel_master: str | None = None
    """Name of the primary that Redis Sentinel monitors: every client (job store, Celery broker and
    result backend) asks the Sentinels in `url` for the current primary and follows a failover."""
    password: SecretStr | None = None
    """Redis password, when the URL carries none."""
    socket_timeout: float = 5.0
    """Seconds a Redis command of a worker may take before the call fails."""
    web_socket_timeout: float = 0.5
    """Seconds a Redis command of the web tier may take: kept under a second so that while Redis
    hangs (frozen, overloaded) submits answer 503 with Retry-After quickly instead of waiting."""
    connect_timeout: float = 1.0
    """Seconds to connect to Redis before giving up (keeps submits fast when Redis is down)."""
    max_connections: int = 64
    """Connections in each process's pool."""


class BrokerSettings(Section):
    url: str | None = None
    """Celery broker URL when it is not the Redis above: `amqp://user:password@host:5672/vhost`
    (RabbitMQ). Empty: the Redis above is the broker. Job records and results stay in Redis."""


class WebSettings(Section):
    host: str = "127.0.0.1"
    """Address the public HTTP port binds to (nginx, or gunicorn without nginx)."""
    port: int = 8000
    """Public HTTP port of `flaskmodel up` and `flaskmodel serve`."""
    workers: int = 2
    """Gunicorn worker processes (gevent)."""
    worker_connections: int = 1000
    """Concurrent connections per gunicorn gevent worker."""
    max_request_bytes: int = 64 * 1024 * 1024
    """Largest accepted request body; bigger bodies get 413."""
    graceful_timeout: int = 30
    """Seconds gunicorn lets in-flight requests finish on SIGTERM."""
    client_header_timeout: float = Field(default=10.0, gt=0)
    """Seconds nginx gives a client to send its whole request head; a slower one (slow-loris) is
    disconnected before anything reaches gunicorn."""
    client_body_timeout: float = Field(default=30.0, gt=0)
    """Seconds nginx waits for the next piece of a request body; a stalled upload is cut off
    (nginx buffers bodies, so gunicorn never sees a partial one)."""
    upstreams: list[str] = Field(default_factory=list)
    """Web hosts (`host:port`, JSON list) the nginx site of `flaskmodel deploy render` balances
    over, each running `flaskmodel serve`; empty: this host's gunicorn on 127.0.0.1:`port`."""
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1", "unix:"])
    """Proxies whose `X-Forwarded-For` the web tier believes (addresses or CIDR ranges, JSON list;
    `unix:` a peer on a unix socket): from one of them, the caller is the right-most address of
    that header that is not one of them; from any other peer, the peer. It names the rate-limit
    bucket of a caller without an API key. Default: this host (`flaskmodel up`'s nginx); add the
    nginx host when nginx runs on another."""

    @model_validator(mode="after")
    def _check_trusted_proxies(self) -> WebSettings:
        for entry in self.trusted_proxies:
            if entry != "unix:":
                ipaddress.ip_network(entry, strict=False)  # ValueError names the entry
        return self


class WorkerSettings(Section):
    concurrency: int = 1
    """Celery pool processes per `flaskmodel worker` (each loads its own models)."""
    pool: Literal["prefork", "solo"] = "prefork"
    """Celery pool; prefork enforces time limits (gevent does not, and TensorFlow blocks it)."""
    proc_alive_timeout: float = 120.0
    """Seconds a pool child may spend loading and warming models before Celery gives up on it."""
    heartbeat_seconds: float = 5.0
    """How often a worker process refreshes its readiness heartbeat in Redis."""
    queue: str = "flaskmodel"
    """Prefix of the Celery queues: jobs for model `m` go to `<queue>.<m>`."""
    models: list[str] = Field(default_factory=list)
    """Models this worker loads and takes work for (JSON list; empty: every model in the models
    root when it starts). `flaskmodel worker --models a,b` sets it."""
    watchdog_seconds: float = Field(default=5.0, ge=0)
    """How often a worker checks that its broker consumer still reads: idle, with messages
    waiting in its queues and none received for three checks in a row, it restarts itself
    (SIGTERM; its supervisor starts a fresh one). 0 turns the check off; Redis broker only."""
    max_tasks_per_child: int = 0
    """Recycle a pool process after this many tasks (0: never)."""
    send_events: bool = False
    """Send Celery task and worker events (what Celery Flower and `celery events` monitor)."""
    node_name: str = "flaskmodel@%h"
    """Celery node name (`-n`; `%h` is the host name). Give each worker on one host its own
    (`gpu0@%h`, `gpu1@%h`); `flaskmodel worker --name` sets it."""


class JobSettings(Section):
    ttl_seconds: int = 7 * 24 * 3600
    """How long job records, results and idempotency keys live in Redis."""
    soft_time_limit: int = 600
    """Seconds a job may run before it is stopped and marked FAILED (timeout)."""
    time_limit: int = 660
    """Hard limit: the pool process running a job is killed after this many seconds."""
    visibility_timeout: int = 3600
    """Broker lease: an unacknowledged job is redelivered after this; must exceed time_limit. (With
    Redis a killed worker's jobs come back much sooner: `restore_unclaimed`.)"""
    max_attempts: int = 3
    """Deliveries of one job (redeliveries after a worker crash included) before it is FAILED."""
    publish_timeout: float = 1.0
    """Seconds a submit may spend publishing to the broker before answering 503."""
    default_priority: int = Field(default=5, ge=1, le=10)
    """Priority of a job that names none (Triton's convention: 1 is the highest, 10 the lowest);
    within a model's queue higher-priority work is taken first."""
    sweep_seconds: float = Field(default=10.0, ge=0)
    """How often one worker (elected by a Redis lock) looks for accepted jobs that no broker
    message will run (lost to a Redis crash between kombu's pop and its unacked record, or
    acknowledged while Redis could not record the end) and publishes them again; a job is
    republished once two sweeps in a row found it so, unchanged; and puts back the messages of
    killed workers (`restore_unclaimed`). 0 turns the sweeper off; it never runs with another
    broker than Redis (`broker.url`), whose queues it reads."""
    restore_unclaimed: bool = True
    """Redis broker: the sweeper also puts back in their queues, at their priority, the messages a
    worker took and never acknowledged when no live worker holds them any more (every worker's
    main process lists the deliveries it holds every `worker.heartbeat_seconds`; a main process
    killed outright stops listing its own): a job whose worker was `kill -9`ed runs again within
    about three heartbeats plus one sweep instead of after `visibility_timeout`. false leaves them
    to `visibility_timeout`."""
    max_jobs_per_message: int = Field(default=32, ge=1)
    """Most tensor jobs one broker message carries: each web process puts the tensor jobs of one
    model and priority submitted while its previous publish was in flight into one message, which
    a worker runs together (one batched model call, one Redis round trip per step for all). 1
    publishes every job on its own."""
    publish_window_ms: float = Field(default=10.0, ge=0)
    """While other jobs of its model are unfinished, a tensor job's submit waits up to this long
    for others to join its message (less once it is full); a job with no other unfinished job of
    its model is published at once. Longer windows make fuller messages: more jobs/s under load,
    that much more latency per job. 0 joins only the jobs that arrive during a publish."""
    max_pending: int = Field(default=10000, ge=1)
    """Most unfinished (queued or running) jobs one model may have; a submit past it gets 429
    with a Retry-After computed from the queue depth and the measured throughput."""


class SeriesSettings(Section):
    default_model: str = "ct_classifier"
    """Model used by the original `/inference/...` route and `/v1/series/<uid>/results`."""
    batch_size: int = 16
    """Slices per model call in a series job (and per progress step)."""
    chunk_batches: int = Field(default=1, ge=1)
    """Batches one task of a series job runs before the rest of the job goes to the back of its
    model's queue, so concurrent jobs interleave (fairness). Time limits apply per chunk."""
    thumbnails: bool = True
    """Render a PNG thumbnail of every slice for the results viewer (`/ui/`), kept with the job."""
    results_ttl_seconds: int = 30 * 24 * 3600
    """TTL of the per-series result hashes `flaskmodel:series:<uid>:<model>`."""


class KvSettings(Section):
    default_ttl_seconds: int | None = None
    """TTL of key/value entries written without `ttl` (empty: they last until deleted)."""
    max_value_bytes: int = 1024 * 1024
    """Largest JSON value the key/value API stores."""


class RemoteModel(Section):
    backend: Literal["tfserving_grpc", "tfserving_rest"]
    """How the model is reached: TensorFlow Serving's gRPC API or its REST API."""
    target: str
    """`host:8500` for `tfserving_grpc`, `http://host:8501` for `tfserving_rest`."""
    timeout_seconds: float | None = Field(default=None, gt=0)
    """Deadline of one call to it (empty: `runtime.tfserving_timeout_seconds`)."""

    @model_validator(mode="after")
    def _check_target(self) -> RemoteModel:
        web = self.target.startswith(("http://", "https://"))
        if self.backend == "tfserving_rest" and not web:
            raise ValueError(
                f"tfserving_rest target must be http(s)://host:port, got {self.target!r}"
            )
        if self.backend == "tfserving_grpc" and ("://" in self.target or ":" not in self.target):
            raise ValueError(f"tfserving_grpc target must be host:port, got {self.target!r}")
        return self


class RuntimeSettings(Section):
    backend: Literal["savedmodel", "fake"] = "savedmodel"
    """Runtime of the models found under the models root: in-process TensorFlow SavedModel, or
    the shipped fake (tests, benchmarks). Models in `remote_models` use theirs instead."""
    remote_models: dict[str, RemoteModel] = Field(default_factory=dict)
    """Models served by TensorFlow Serving instead of in-process (JSON object): name →
    `{"backend": "tfserving_grpc" | "tfserving_rest", "target", "timeout_seconds"?}`, e.g.
    `{"tiny": {"backend": "tfserving_grpc", "target": "tfs:8500"}}`. Their versions are those TF
    Serving reports AVAILABLE; a `flaskmodel.json` under the models root still applies."""
    gpu_memory_limit_mb: int | None = None
    """Per-process GPU memory limit (MiB) for TensorFlow in a worker (a logical device capped at
    this size on each visible GPU); empty: TensorFlow's memory growth (allocate as needed).
    Pin a worker to one GPU with `CUDA_VISIBLE_DEVICES`."""
    warmup: bool = True
    """Call each model once with zeros before the worker reports ready."""
    tfserving_timeout_seconds: float = 30.0
    """Seconds one call to TensorFlow Serving may take (default of `remote_models`)."""


class BatchingSettings(Section):
    max_batch_size: int = 32
    """Most examples one model call merges from concurrent requests (per model: `max_batch_size`
    in `flaskmodel.json`). 0 turns dynamic batching off."""
    max_batch_delay_ms: float = 2.0
    """Longest a request waits for others to fill its batch, only while requests overlap (a lone
    request goes at once) and until the batch holds as many requests as the last one did; a full
    batch goes at once (per model: `max_batch_delay_ms` in `flaskmodel.json`). 0 turns dynamic
    batching off."""
    tune_batch_size: bool = True
    """Learn, per model, the batch size up to `max_batch_size` that costs least time per example
    on this host, from the batches it runs, and batch up to that (docs/batching.md); off: every
    batch takes up to `max_batch_size`."""
    batch_threads: int = Field(default=2, ge=1)
    """Batches of one model that may run at once, as TF Serving's `num_batch_threads` (per model:
    `batch_threads` in `flaskmodel.json`). Only a slow model gets more than one: once its median
    call takes 20 ms or more (docs/batching.md). 1: one batch at a time."""
    sync_timeout_seconds: float = 30.0
    """Default deadline of a synchronous predict/infer: 504 past it, and work not started by then
    is dropped."""
    max_timeout_seconds: float = 300.0
    """Longest deadline a request may ask for (V2 `timeout` parameter, `Prefer: wait=N`)."""
    reply_ttl_seconds: int = 30
    """TTL of a web process's reply list `flaskmodel:replies:<channel>` (renewed by every reply;
    the list of a web process that died expires)."""


class MetricsSettings(Section):
    flush_seconds: float = Field(default=1.0, gt=0)
    """How often each web and worker process adds the counters it accumulated to Redis
    (`flaskmodel:metrics`), which `/metrics` sums; also the most a scrape lags behind."""
    allow: list[str] = Field(default_factory=list)
    """Addresses or CIDR ranges nginx lets read `/metrics` (JSON list); empty: anyone who can
    reach the API."""
    port: int | None = Field(default=None, ge=1, le=65535)
    """A port of its own for `/metrics` (e.g. 8002, as Triton's): nginx serves `/metrics` there
    only and the API port answers it 404; unset: `/metrics` is on the API port. Needs nginx in
    front (`flaskmodel up`, the deploy set's site), which also applies `allow` there."""

    @model_validator(mode="after")
    def _check_allow(self) -> MetricsSettings:
        for entry in self.allow:
            if entry != "unix:":
                ipaddress.ip_network(entry, strict=False)  # ValueError names the entry
        return self


class LogSettings(Section):
    level: str = "INFO"
    """Log level of every FlaskModel process."""
    json_lines: bool = False
    """Write logs as JSON lines instead of text."""


class SecuritySettings(Section):
    api_keys: list[SecretStr] = Field(default_factory=list)
    """API keys accepted besides those in `api_keys_file` (JSON list; each `"<key>"` or
    `"<name> <key>"`). No key anywhere: authentication is off."""
    api_keys_file: Path | None = None
    """File of API keys, one a line: `<key>` or `<name> <key>` (`#` comments and blank lines
    ignored); re-read when it changes."""
    rate_limit_per_second: float = Field(default=0.0, ge=0)
    """Requests per second each API key (or, with authentication off, each client address) may
    make on average; 0 turns rate limiting off."""
    rate_limit_burst: int = Field(default=20, ge=1)
    """Requests a caller may make at once before the per-second rate applies."""
