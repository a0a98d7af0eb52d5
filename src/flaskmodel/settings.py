"""FlaskModel's one typed configuration object.

Every setting comes from ``Settings``: environment variables prefixed ``FLASKMODEL_`` with nested
sections joined by ``__`` (``FLASKMODEL_REDIS__URL``, ``FLASKMODEL_JOBS__TTL_SECONDS``). Tests build
``Settings(...)`` directly. The README's configuration table is generated from these fields
(``flaskmodel check --markdown``); a test fails when it is stale.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class RedisSettings(Section):
    url: str | None = None
    """Redis URL (`redis://host:port/db` or `unix:///path.sock`). Empty: `flaskmodel up` starts
    its own redis-server; `serve` and `worker` refuse to start."""
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
    max_tasks_per_child: int = 0
    """Recycle a pool process after this many tasks (0: never)."""


class JobSettings(Section):
    ttl_seconds: int = 7 * 24 * 3600
    """How long job records, results and idempotency keys live in Redis."""
    soft_time_limit: int = 600
    """Seconds a job may run before it is stopped and marked FAILED (timeout)."""
    time_limit: int = 660
    """Hard limit: the pool process running a job is killed after this many seconds."""
    visibility_timeout: int = 3600
    """Broker lease: an unacknowledged job is redelivered after this; must exceed time_limit."""
    max_attempts: int = 3
    """Deliveries of one job (redeliveries after a worker crash included) before it is FAILED."""
    publish_timeout: float = 1.0
    """Seconds a submit may spend publishing to the broker before answering 503."""
    sweep_seconds: float = Field(default=10.0, ge=0)
    """How often one worker (elected by a Redis lock) looks for accepted jobs that no broker
    message will run (lost to a Redis crash between kombu's pop and its unacked record, or
    acknowledged while Redis could not record the end) and publishes them again; a job is
    republished once two sweeps in a row found it so, unchanged. 0 turns the sweeper off."""
    max_pending: int = Field(default=10000, ge=1)
    """Most unfinished (queued or running) jobs one model may have; a submit past it gets 429
    with a Retry-After computed from the queue depth and the measured throughput."""


class SeriesSettings(Section):
    default_model: str = "ct_classifier"
    """Model used by the original `/inference/...` route and `/v1/series/<uid>/results`."""
    batch_size: int = 16
    """Slices per model call in a series job (and per progress step)."""
    thumbnails: bool = True
    """Render a PNG thumbnail of every slice for the results viewer (`/ui/`), kept with the job."""
    results_ttl_seconds: int = 30 * 24 * 3600
    """TTL of the per-series result hashes `flaskmodel:series:<uid>:<model>`."""


class KvSettings(Section):
    default_ttl_seconds: int | None = None
    """TTL of key/value entries written without `ttl` (empty: they last until deleted)."""
    max_value_bytes: int = 1024 * 1024
    """Largest JSON value the key/value API stores."""


class RuntimeSettings(Section):
    backend: Literal["savedmodel", "fake", "tfserving_rest"] = "savedmodel"
    """Model runtime: in-process TensorFlow SavedModel, the shipped fake (tests, benchmarks), or a
    remote TensorFlow Serving REST endpoint (`tfserving_url`)."""
    warmup: bool = True
    """Call each model once with zeros before the worker reports ready."""
    tfserving_url: str | None = None
    """Base URL of the TensorFlow Serving REST API (`http://host:8501`) for `tfserving_rest`."""
    tfserving_models: list[str] = Field(default_factory=list)
    """Models the `tfserving_rest` backend serves (JSON list); TF Serving cannot list them."""
    tfserving_timeout_seconds: float = 30.0
    """Seconds one call to TensorFlow Serving may take."""


class BatchingSettings(Section):
    max_batch_size: int = 32
    """Most examples one model call merges from concurrent requests (per model: `max_batch_size`
    in `flaskmodel.json`). 0 turns dynamic batching off."""
    max_batch_delay_ms: float = 2.0
    """Longest a request waits for others to fill its batch; a full batch goes at once (per model:
    `max_batch_delay_ms` in `flaskmodel.json`). 0 turns dynamic batching off."""
    sync_timeout_seconds: float = 30.0
    """Default deadline of a synchronous predict/infer: 504 past it, and work not started by then
    is dropped."""
    max_timeout_seconds: float = 300.0
    """Longest deadline a request may ask for (V2 `timeout` parameter, `Prefer: wait=N`)."""
    reply_ttl_seconds: int = 30
    """TTL of a synchronous call's reply key `flaskmodel:reply:<id>` (read at once when awaited)."""


class LogSettings(Section):
    level: str = "INFO"
    """Log level of every FlaskModel process."""
    json_lines: bool = False
    """Write logs as JSON lines instead of text."""


class Settings(BaseSettings):
    """All of FlaskModel's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="FLASKMODEL_",
        env_nested_delimiter="__",
        extra="forbid",
        use_attribute_docstrings=True,
    )

    models_root: Path = Path("var/models")
    """Model repository: `<models_root>/<model>/<version>/` holds a SavedModel."""
    data_root: Path = Path("var/data")
    """DICOM data root: a series job reads `<data_root>/<series_uid>/`."""
    run_dir: Path = Path("var/run")
    """Where `flaskmodel up` keeps its generated configs, sockets, logs and Redis data."""
    redis: RedisSettings = Field(default_factory=RedisSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    series: SeriesSettings = Field(default_factory=SeriesSettings)
    kv: KvSettings = Field(default_factory=KvSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        jobs = self.jobs
        if jobs.soft_time_limit >= jobs.time_limit:
            raise ValueError("jobs.soft_time_limit must be below jobs.time_limit")
        # A lease shorter than the hard limit redelivers a job that is still running.
        if jobs.visibility_timeout <= jobs.time_limit:
            raise ValueError("jobs.visibility_timeout must exceed jobs.time_limit")
        if self.runtime.backend == "tfserving_rest" and not self.runtime.tfserving_url:
            raise ValueError("runtime.backend 'tfserving_rest' needs runtime.tfserving_url")
        if self.batching.sync_timeout_seconds > self.batching.max_timeout_seconds:
            raise ValueError("batching.sync_timeout_seconds must not exceed max_timeout_seconds")
        return self

    def redis_url(self) -> str:
        """The Redis URL to connect to; raises when none is configured."""
        if not self.redis.url:
            raise ValueError(
                "no Redis configured: set FLASKMODEL_REDIS__URL or use `flaskmodel up`"
            )
        return self.redis.url

    def env(self) -> dict[str, str]:
        """These settings as FLASKMODEL_* environment variables (for child processes)."""
        out: dict[str, str] = {}
        for key, value in _flatten(self.model_dump(mode="python")):
            if value is None:
                continue
            if isinstance(value, SecretStr):
                text = value.get_secret_value()
            elif isinstance(value, list | dict):
                text = json.dumps(value)  # pydantic-settings reads complex values as JSON
            else:
                text = str(value).lower() if isinstance(value, bool) else str(value)
            out["FLASKMODEL_" + key.upper()] = text
        return out

    def masked(self) -> list[tuple[str, str]]:
        """(env name, value) pairs with secrets and URL passwords masked, for display."""
        rows = []
        for key, value in _flatten(self.model_dump(mode="python")):
            if isinstance(value, SecretStr):
                shown = "**********"
            elif isinstance(value, str) and "://" in value:
                shown = mask_url(value)
            else:
                shown = "" if value is None else str(value)
            rows.append(("FLASKMODEL_" + key.upper(), shown))
        return rows


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{prefix}{key}__"))
        else:
            rows.append((prefix + key, value))
    return rows


def mask_url(url: str) -> str:
    """``url`` with any password replaced by asterisks."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":**********@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def settings_table() -> str:
    """The README's configuration table (Markdown), generated from the fields above."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, default, doc in _field_rows(Settings, "FLASKMODEL_"):
        lines.append(f"| `{name}` | {default} | {doc} |")
    return "\n".join(lines) + "\n"


def _field_rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            rows.extend(_field_rows(annotation, f"{prefix}{name.upper()}__"))
            continue
        default = field.get_default(call_default_factory=True)
        shown = "(empty)" if default is None else f"`{default}`"
        doc = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append((prefix + name.upper(), shown, doc))
    return rows
