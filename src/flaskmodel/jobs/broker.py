"""The Celery app, configured entirely from Settings (JSON only, late acks, short publish retry).

Also the wire conventions of job messages: one queue per model, the task id of each chunk of a
job, and job priorities (Triton's 1 = highest) in the broker's own numbers.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from flaskmodel.settings import Settings

TASK_RUN_JOB = "flaskmodel.run_job"
# Several tensor jobs in one message (``publish_jobs``); its only argument is their ids.
TASK_RUN_JOBS = "flaskmodel.run_jobs"

# Job priorities, Triton's convention: 1 is the highest.
MAX_PRIORITY = 10


def model_queue(base: str, model: str) -> str:
    """The Celery queue of one model's jobs (``<base>.<model>``): workers consume their models'."""
    return f"{base}.{model}"


def chunk_task_id(job_id: str, chunk: int) -> str:
    """The Celery task id of one chunk of a job: the job id itself for the first chunk."""
    return job_id if chunk == 0 else f"{job_id}.{chunk}"


def job_of_task(task_id: str) -> str:
    """The job a task id belongs to (inverse of ``chunk_task_id``; the first job of a
    ``publish_jobs`` message)."""
    return task_id.split(".", 1)[0].split("+", 1)[0]


def redis_queue_keys(queue: str) -> list[str]:
    """The Redis lists holding a queue's messages, highest priority first (kombu's layout)."""
    return [queue, *(f"{queue}\x06\x16{n}" for n in range(1, MAX_PRIORITY))]


def is_amqp(url: str) -> bool:
    return url.startswith(("amqp://", "amqps://", "pyamqp://"))


def broker_priority(priority: int, url: str) -> int:
    """A job priority (1 highest … 10 lowest) in the broker's numbers.

    kombu's Redis transport takes the lowest number first (0 … 9, one list per step); AMQP
    (RabbitMQ, with ``x-max-priority``) delivers the highest number first (9 … 0).
    """
    priority = min(max(priority, 1), MAX_PRIORITY)
    return MAX_PRIORITY - priority if is_amqp(url) else priority - 1


def publish_job(
    app: Celery, job_id: str, model: str, *, queue: str, priority: int, chunk: int = 0
) -> None:
    """Put (a chunk of) a job at the back of its model's queue (``<queue>.<model>``)."""
    app.send_task(
        TASK_RUN_JOB,
        args=[job_id, chunk],
        task_id=chunk_task_id(job_id, chunk),
        queue=model_queue(queue, model),
        priority=broker_priority(priority, app.conf.broker_url),
        # Results live in the JobStore: no SUBSCRIBE to Celery's result channel per publish.
        ignore_result=True,
    )


def publish_jobs(app: Celery, job_ids: list[str], model: str, *, queue: str, priority: int) -> None:
    """Put several tensor jobs of one model and priority in one message at the back of their
    queue; a worker runs them together. Its task id is the first job's, followed by ``+``."""
    app.send_task(
        TASK_RUN_JOBS,
        args=[job_ids],
        task_id=f"{job_ids[0]}+{len(job_ids)}",
        queue=model_queue(queue, model),
        priority=broker_priority(priority, app.conf.broker_url),
        ignore_result=True,
    )


def broker_url(settings: Settings) -> str:
    """The broker URL: ``broker.url``, else the Redis URL in kombu's spelling (``redis+socket://``
    for unix sockets)."""
    return settings.broker.url or redis_url(settings)


def redis_url(settings: Settings) -> str:
    """The Redis URL in kombu's spelling (``redis+socket://`` for unix sockets)."""
    url = settings.redis_url()
    if url.startswith("unix://"):
        url = "redis+socket://" + url.removeprefix("unix://")
    if settings.redis.password and "@" not in url.split("//", 1)[1].split("/", 1)[0]:
        scheme, rest = url.split("://", 1)
        secret = settings.redis.password.get_secret_value()
        url = f"{scheme}://:{secret}@{rest}"
    return url


def celery_config(settings: Settings) -> dict[str, Any]:
    url = broker_url(settings)
    jobs = settings.jobs
    restore_interval = max(1, min(10, jobs.visibility_timeout // 10))
    transport: dict[str, Any] = {
        # A lease: an unacked job is redelivered after this, so it must outlive the hard limit.
        "visibility_timeout": jobs.visibility_timeout,
        # Jobs of a worker killed outright sit unacked until the lease ends; sweep for them
        # often enough (kombu's default sweeps every 100 s) that they return soon after it.
        "unacked_restore_interval": restore_interval,
        "unacked_restore_throttle": 1,
        # The lock one restore sweep holds (kombu's default: 300 s). A sweep cut off by a Redis
        # outage cannot release it, and no unacked message was restored until it expired: a job
        # whose reject failed in the outage sat unacked for five minutes. A sweep takes
        # milliseconds; two that overlap restore each message once (a WATCH transaction).
        "unacked_mutex_expire": restore_interval * 3,
        "socket_timeout": settings.redis.socket_timeout,
        "socket_connect_timeout": settings.redis.connect_timeout,
        "max_connections": settings.redis.max_connections,
        # One list per priority (0 … 9, lowest number first): see ``broker_priority``.
        "priority_steps": list(range(MAX_PRIORITY)),
    }
    backend_transport: dict[str, Any] = {"visibility_timeout": jobs.visibility_timeout}
    if settings.redis.sentinel_master:  # kombu and Celery ask the Sentinels for the primary
        backend_transport["master_name"] = settings.redis.sentinel_master
        if not settings.broker.url:
            transport["master_name"] = settings.redis.sentinel_master
    return {
        "broker_url": url,
        "result_backend": redis_url(settings),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,  # job results live in the JobStore, not Celery's backend
        "result_expires": jobs.ttl_seconds,
        "broker_transport_options": transport,
        "result_backend_transport_options": backend_transport,
        "visibility_timeout": jobs.visibility_timeout,
        "redis_socket_timeout": settings.redis.socket_timeout,
        "redis_socket_connect_timeout": settings.redis.connect_timeout,
        "broker_connection_timeout": settings.redis.connect_timeout,
        "broker_connection_retry_on_startup": True,
        # With Redis down a default publish blocks ~19 s; fail fast and answer 503 instead.
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": settings.jobs.publish_timeout / 4,
            "interval_max": settings.jobs.publish_timeout / 2,
        },
        "task_soft_time_limit": jobs.soft_time_limit,
        "task_time_limit": jobs.time_limit,
        "task_default_queue": settings.worker.queue,
        # RabbitMQ: every queue is declared with x-max-priority (Redis ignores it).
        "task_queue_max_priority": MAX_PRIORITY - 1,
        "task_default_priority": broker_priority(jobs.default_priority, url),
        "task_create_missing_queues": True,
        "worker_proc_alive_timeout": settings.worker.proc_alive_timeout,
        "worker_max_tasks_per_child": settings.worker.max_tasks_per_child or None,
        "worker_hijack_root_logger": False,
        # Cancelling running jobs when the broker connection drops goes through the result
        # backend (the same, unreachable, Redis); when that fails Celery terminates the job and
        # acknowledges its message on the reconnected channel, which lost accepted jobs under
        # `kill -9` of Redis. Left running, a job that cannot ack stays unacked and comes back.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_enable_remote_control": True,
        # Events are what Celery Flower and `celery events` watch; off by default (traffic).
        "worker_send_task_events": settings.worker.send_events,
        "task_send_sent_event": settings.worker.send_events,
    }


def make_celery(settings: Settings) -> Celery:
    """A configured Celery app; connects to nothing until used."""
    app = Celery("flaskmodel", set_as_current=False)
    app.conf.update(celery_config(settings))
    app.flaskmodel_settings = settings
    return app
